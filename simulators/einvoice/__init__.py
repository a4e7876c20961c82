"""Fiscal medical e-invoice platform simulator (signed envelope, SQLite books, faults).

A real protocol peer for demos, tests and benchmarks: verifies each request's signature,
validates it strictly, issues invoices with batch codes and numbers in sequence, keeps
them (normal / written off with a red note) in SQLite, serves each invoice as a PDF, and
fails on demand (``POST /_control/faults``; see ``simulators.einvoice.faults``).

Run alone: ``hisbridge simulate einvoice --listen 127.0.0.1:8085`` (or
``python -m simulators.einvoice``). The signing key is read from ``--key-file`` and
generated there on first run, so the engine's config can reference the same file
(``key = "file:data/einvoice-sim.key"``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
from pathlib import Path

from simulators.einvoice.platform import EinvoiceSimulator

__all__ = ["EinvoiceSimulator", "add_arguments", "load_or_create_key", "main", "serve"]


def load_or_create_key(path: str | Path) -> str:
    """The key in ``path``; a new random one is written there (mode 0600) if it is missing."""
    path = Path(path)
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(16)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(key + "\n")
    return key


async def serve(
    host: str = "127.0.0.1",
    port: int = 8085,
    *,
    appid: str = "HOSP0001",
    key: str,
    db_path: str | Path = "data/einvoice-sim.db",
    duplicate_bus_no: str = "reject",
    sign_responses: bool = True,
    ready: asyncio.Event | None = None,
) -> None:
    """Run the simulator until cancelled. ``ready`` is set once it listens."""
    simulator = EinvoiceSimulator(
        db_path,
        accounts={appid: key},
        host=host,
        port=port,
        duplicate_bus_no="allow" if duplicate_bus_no == "allow" else "reject",
        sign_responses=sign_responses,
    )
    await simulator.start()
    print(f"e-invoice platform simulator at {simulator.url} (appid {appid}); "
          f"faults: POST {simulator.url}/_control/faults", flush=True)
    if ready is not None:
        ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        await simulator.stop()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", default="127.0.0.1:8085", help="host:port (port 0: any free)")
    p.add_argument("--appid", default="HOSP0001")
    p.add_argument("--key-file", default="data/einvoice-sim.key",
                   help="signing key file, created with a random key if missing")
    p.add_argument("--db", default="data/einvoice-sim.db", help="SQLite file of the books")
    p.add_argument("--duplicate-bus-no", choices=("reject", "allow"), default="reject",
                   help="refuse a second invoice for a busNo (E2001), or allow it")
    p.add_argument("--unsigned-answers", action="store_true",
                   help="do not sign answers (platforms that do not)")


def main(args: argparse.Namespace) -> int:
    host, _, port = args.listen.rpartition(":")
    key = load_or_create_key(args.key_file)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(host, int(port), appid=args.appid, key=key, db_path=args.db,
                          duplicate_bus_no=args.duplicate_bus_no,
                          sign_responses=not args.unsigned_answers))
    return 0
