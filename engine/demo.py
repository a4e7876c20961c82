"""``hisbridge demo``: the simulators the config points at, the engine, and HIS traffic.

Starts a simulator for every destination in the config (a FHIR server for ``fhir``
destinations, an MLLP receiver for ``mllp`` ones), starts the engine, streams realistic HIS
messages into the first MLLP source, switches a short outage on in the middle so retries are
visible, and prints what went where.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from adapters.mllp import MllpSourceConfig
from engine.config import Config
from engine.runtime import Engine
from simulators.fhir import FhirServer
from simulators.his import HisReceiver, HisSender, traffic


async def start_simulators(config: Config) -> dict[str, Any]:
    """One simulator per distinct peer address among the destinations."""
    sims: dict[str, Any] = {}
    for ch in config.channels:
        for dest in ch.destinations:
            sim: Any
            if dest.type == "fhir":
                url = urlsplit(dest.base_url)
                key = f"fhir {url.hostname}:{url.port}"
                if key in sims:
                    continue
                sim = FhirServer(url.hostname or "127.0.0.1", url.port or 80, base=url.path)
            elif dest.type == "mllp":
                key = f"mllp {dest.host}:{dest.port}"
                if key in sims:
                    continue
                sim = HisReceiver(dest.host, dest.port)
            else:
                continue
            await sim.start()
            sims[key] = sim
    return sims


class Progress:
    def __init__(self, engine: Engine, out: Any = sys.stdout) -> None:
        self.engine = engine
        self.out = out
        self.sent = 0
        self.acked: dict[str, int] = {}
        self.tty = out.isatty()

    def on_ack(self, cid: str, code: str, latency: float) -> None:
        self.sent += 1
        self.acked[code] = self.acked.get(code, 0) + 1

    def line(self) -> str:
        m = self.engine.metrics
        return (
            f"sent {self.sent:>6}  ACK {self.acked.get('AA', 0):>6}  "
            f"delivered {int(m.sent.total()):>6}  retries {int(m.retried.total()):>4}  "
            f"dead letters {int(m.dead_lettered.total()):>3}  filtered {int(m.filtered.total()):>4}"
        )

    async def run(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self.show()

    def show(self, final: bool = False) -> None:
        if self.tty:
            self.out.write("\r" + self.line() + ("\n" if final else ""))
        elif final or int(time.monotonic() * 2) % 10 == 0:
            self.out.write(self.line() + "\n")
        self.out.flush()


async def _drained(engine: Engine, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        depths = [await engine.backend.depth(rt.worker.queue) for rt in engine.channels.values()]
        depths += [await engine.backend.depth(d.queue) for rt in engine.channels.values()
                   for d in rt.destinations]
        if not any(depths):
            return True
        await asyncio.sleep(0.2)
    return False


async def _outage(sims: dict[str, Any], after: float) -> None:
    await asyncio.sleep(after)
    for sim in sims.values():
        if isinstance(sim, FhirServer):
            await sim.set_fault("error", status=503, duration=3.0)
            print("\n-- FHIR server answers 503 for 3 s: deliveries retry with backoff --")


def summary(engine: Engine, sims: dict[str, Any]) -> str:
    m = engine.metrics
    rows = [("channel/destination", "delivered", "retried", "dead-lettered", "state")]
    for rt in engine.channels.values():
        for d in rt.destinations:
            labels = {"channel": d.channel, "destination": d.name}
            rows.append((f"{d.channel}/{d.name}", str(int(m.sent.get(**labels))),
                         str(int(m.retried.get(**labels))),
                         str(int(m.dead_lettered.get(**labels))), d.health.state))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(
        f"received {int(m.received.total())}, duplicates {int(m.duplicates.total())}, "
        f"refused {int(m.refused.total())}, filtered {int(m.filtered.total())}, "
        f"mapping errors {int(m.mapping_errors.total())}"
    )
    for name, sim in sims.items():
        if isinstance(sim, FhirServer):
            counts = ", ".join(f"{k} {len(v)}" for k, v in sorted(sim.resources.items()))
            lines.append(f"{name}: {counts or 'nothing stored'}")
        elif isinstance(sim, HisReceiver):
            lines.append(f"{name}: {len(sim.received)} message(s) acknowledged")
    return "\n".join(lines)


async def run_demo(
    config: Config, *, count: int | None, duration: float | None, rate: float, faults: bool,
) -> int:
    source = next((c for c in config.channels
                   if c.enabled and isinstance(c.source, MllpSourceConfig)), None)
    if source is None or not isinstance(source.source, MllpSourceConfig):
        print("the config has no MLLP source to send HIS traffic to", file=sys.stderr)
        return 2
    sims = await start_simulators(config)
    engine = Engine(config)
    try:
        await engine.start()
    except BaseException:
        for sim in sims.values():
            await sim.stop()
        raise
    host = source.source.listen.rpartition(":")[0]
    port = engine.source_port(source.name)
    admin_port = engine.admin.port if engine.admin else 0
    print(f"hisbridge demo: HIS → MLLP {host}:{port} → {len(source.destinations)} destination(s)")
    if admin_port:
        print(f"admin API and dashboard: http://127.0.0.1:{admin_port}/ "
              f"(token in {config.resolve(config.store.path).parent / 'admin.token'})")
    for name in sims:
        print(f"simulator: {name}")
    progress = Progress(engine)
    ticker = asyncio.create_task(progress.run())
    outage = None
    if faults:
        after = (count / rate * 0.3) if count else min(5.0, (duration or 10) * 0.3)
        outage = asyncio.create_task(_outage(sims, after))
    sender = HisSender(host, port, connections=2)
    messages = itertools.islice(traffic(), count) if count else traffic()
    sending = asyncio.create_task(sender.send(messages, rate=rate, on_ack=progress.on_ack))
    try:
        if duration:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(sending), duration)
            sending.cancel()
        else:
            await sending
        await _drained(engine, 60.0)
        progress.show(final=True)
        print()
        print(summary(engine, sims))
        if count is None and duration is None:  # pragma: no cover - interactive
            print("\nadmin endpoint stays up; Ctrl-C to stop")
            await asyncio.Event().wait()
    finally:
        for task in (ticker, outage, sending):
            if task is not None:
                task.cancel()
        await engine.stop()
        for sim in sims.values():
            await sim.stop()
    return 0
