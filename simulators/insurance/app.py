"""The insurance simulator as one aiohttp application, and how to run it.

Routes:

- ``POST /fsi/api/rsfComIfsService/callService``: the national JSON platform.
- ``GET|POST /regional/asmx`` and ``/regional/pipe``: the regional SOAP service in its two
  shapes (``?wsdl`` serves each WSDL).
- ``/control/...``: faults (``POST``/``DELETE /control/faults``), state
  (``GET /control/state``: counts and active faults), ``GET /control/settlements``,
  ``POST /control/expire-sign-ins``. Only for tests and demos: bind to 127.0.0.1.

Run alone: ``python -m simulators.insurance --port 9100 --db data/insurance-sim.db``, or from
code: ``site = await serve("127.0.0.1", 0, db_path=...)``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from simulators.insurance.faults import Faults
from simulators.insurance.gateway import GatewayCheck
from simulators.insurance.national import PATH, NationalService, encode_json
from simulators.insurance.platform import Platform
from simulators.insurance.regional import RegionalService
from simulators.insurance.store import Store

log = logging.getLogger("hisbridge.simulators.insurance")

DEFAULT_INSTITUTION = ("H44030500001", "深圳市示例人民医院")


@dataclass
class Simulator:
    """A running simulator: its address and the objects tests may inspect."""

    runner: web.AppRunner
    host: str
    port: int
    store: Store
    platform: Platform
    faults: Faults
    national: NationalService
    regional: RegionalService
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def close(self) -> None:
        """Stop serving and close the database (idempotent)."""
        if self.settings.get("closed"):
            return
        self.settings["closed"] = True
        self.faults.released.set()
        await self.runner.cleanup()
        self.store.close()


def build_app(
    *,
    db_path: str | Path = ":memory:",
    gateway: GatewayCheck | None = None,
    institutions: dict[str, str] | None = None,
    pipe_user: str = "hisbridge",
    pipe_password: str | None = None,
    admvs: str = "440300",
) -> tuple[web.Application, dict[str, Any]]:
    store = Store(db_path)
    platform = Platform(store, admvs=admvs)
    faults = Faults()
    institutions = institutions or dict([DEFAULT_INSTITUTION])
    national = NationalService(platform, gateway or GatewayCheck(), faults, institutions)
    regional = RegionalService(
        platform, faults, org_code=next(iter(institutions)), pipe_user=pipe_user,
        pipe_password=pipe_password or secrets.token_urlsafe(12),
    )
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_post(PATH, national.handle)
    app.router.add_routes(regional.routes())
    control = _Control(store, platform, faults, regional)
    app.router.add_routes(control.routes())
    parts = {"store": store, "platform": platform, "faults": faults, "national": national,
             "regional": regional}
    return app, parts


class _Control:
    def __init__(self, store: Store, platform: Platform, faults: Faults,
                 regional: RegionalService) -> None:
        self.store, self.platform, self.faults, self.regional = store, platform, faults, regional

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/control/faults", self.set_faults),
            web.delete("/control/faults", self.clear_faults),
            web.get("/control/state", self.state),
            web.get("/control/settlements", self.settlements),
            web.post("/control/expire-sign-ins", self.expire),
        ]

    async def set_faults(self, request: web.Request) -> web.Response:
        try:
            spec = await request.json()
            if not isinstance(spec, dict):
                raise ValueError("a JSON object of faults")
            self.faults.configure(spec)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(self.faults.describe())

    async def clear_faults(self, request: web.Request) -> web.Response:
        self.faults.clear()
        return web.json_response({})

    async def state(self, request: web.Request) -> web.Response:
        return web.json_response({**self.store.counts(), "faults": self.faults.describe(),
                                  "wsdl_requests": self.regional.wsdl_requests})

    async def settlements(self, request: web.Request) -> web.Response:
        rows = [dict(r) for r in self.store.all("SELECT * FROM settlement ORDER BY setl_id")]
        return web.Response(body=encode_json(rows), content_type="application/json")

    async def expire(self, request: web.Request) -> web.Response:
        with self.store.tx():
            n = self.platform.expire_sign_ins()
        return web.json_response({"expired": n})


async def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    db_path: str | Path = ":memory:",
    gateway: GatewayCheck | None = None,
    institutions: dict[str, str] | None = None,
    pipe_user: str = "hisbridge",
    pipe_password: str | None = None,
) -> Simulator:
    """Start the simulator; returns once it listens (``port=0`` picks a free port)."""
    app, parts = build_app(db_path=db_path, gateway=gateway, institutions=institutions,
                           pipe_user=pipe_user, pipe_password=pipe_password)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = int(runner.addresses[0][1])
    return Simulator(runner, host, bound, settings={"pipe_user": pipe_user,
                     "pipe_password": parts["regional"].pipe_password}, **parts)


def main(argv: list[str] | None = None) -> int:
    """``python -m simulators.insurance``: run until interrupted.

    Gateway credentials come from the environment (never the command line):
    ``SIM_XTIF_PAASID`` / ``SIM_XTIF_TOKEN`` for x-tif, ``SIM_HMAC_KEY`` / ``SIM_HMAC_SECRET``
    for HMAC-SHA1; none set means no gateway check. ``SIM_PIPE_PASSWORD`` sets the pipe
    service's password (random and printed otherwise).
    """
    parser = argparse.ArgumentParser(prog="hisbridge simulate insurance")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--db", default="data/insurance-sim.db")
    parser.add_argument("--institution", default=DEFAULT_INSTITUTION[0])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    gateway = GatewayCheck()
    if os.environ.get("SIM_XTIF_TOKEN"):
        gateway = GatewayCheck("x-tif", {os.environ.get("SIM_XTIF_PAASID", "hisbridge"):
                                         os.environ["SIM_XTIF_TOKEN"]})
    elif os.environ.get("SIM_HMAC_SECRET"):
        gateway = GatewayCheck("hmac-sha1", {os.environ.get("SIM_HMAC_KEY", "hisbridge"):
                                             os.environ["SIM_HMAC_SECRET"]})
    password = os.environ.get("SIM_PIPE_PASSWORD")

    async def run() -> None:
        sim = await serve(args.host, args.port, db_path=args.db, gateway=gateway,
                          institutions={args.institution: DEFAULT_INSTITUTION[1]},
                          pipe_password=password)
        print(f"insurance simulator on {sim.url} (gateway: {gateway.scheme}, "
              f"institution {args.institution}, db {args.db})", flush=True)
        if password is None:
            print(f"pipe service user {sim.settings['pipe_user']!r} password "
                  f"{sim.settings['pipe_password']!r}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await sim.close()

    asyncio.run(run())
    return 0
