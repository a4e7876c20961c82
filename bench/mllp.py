"""MLLP throughput and latency: the engine beside two baselines, measured in one run.

    python -m bench.mllp [--messages 20000] [--connections 8] [--queue sqlite|rabbitmq]

Scenarios (each in fresh processes; the engine, the peer simulator and this load generator
are separate processes so the engine has a core to itself):

- ``bare``: an asyncio MLLP server that ACKs without storing: the ceiling for the transport.
- ``engine``: N connections at full speed into ``hisbridge serve`` (SQLite store,
  ``synchronous=FULL``), delivering to the FHIR simulator through the ADT → FHIR mapping
  (or to an MLLP receiver with ``--destination mllp``). Throughput is end to end: from the
  first send to the last delivery acknowledged by the destination.
- ``engine@R/s``: the same at a fixed rate R (default 1,000/s) to read the ACK latency.
- ``hl7apy``: the engine with ``strict = true``: every message parsed and validated by hl7apy.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from adapters.mllp import END, START, FrameReader
from bench.processes import (
    REPO,
    Process,
    histogram,
    histogram_quantile,
    machine,
    metric_value,
    percentile,
    process_cpu,
    wait_port,
)
from engine.hl7 import build_ack, parse
from engine.message import id_time
from simulators.his import HisSender, traffic
from tests.conftest import free_port

# The broker for --queue rabbitmq (guest account); each run uses its own queue prefix.
RABBITMQ = os.environ.get("HISBRIDGE_RABBITMQ", "127.0.0.1:5672")

ADT_MAPPING_CANDIDATES = ("adt_to_fhir", "adt_to_patient", "adt_patient_encounter")


@dataclass
class Row:
    scenario: str
    messages: int
    throughput: float
    ack_p50: float
    ack_p99: float
    e2e_p99: float
    engine_cpu: float = float("nan")
    worker_cpu: float = float("nan")
    peer_cpu: float = float("nan")
    sender_cpu: float = float("nan")
    broker_cpu: float = float("nan")

    def cells(self) -> list[str]:
        def ms(v: float) -> str:
            return "-" if v != v else f"{v * 1000:.1f}"

        def us(v: float) -> str:
            return "-" if v != v else f"{v * 1e6:.0f}"

        return [self.scenario, str(self.messages), f"{self.throughput:,.0f}", ms(self.ack_p50),
                ms(self.ack_p99), ms(self.e2e_p99), us(self.engine_cpu), us(self.worker_cpu),
                us(self.peer_cpu), us(self.sender_cpu), us(self.broker_cpu)]


# CPU columns are microseconds per message: the engine process, its mapping workers, the
# peer simulator, the load generator and (with --queue rabbitmq) the broker on this machine.
# Their sum against the cores says how close a run is to what the machine can do.
HEADERS = ["scenario", "messages", "msg/s", "ACK p50 ms", "ACK p99 ms", "e2e p99 ms",
           "engine CPU", "workers CPU", "peer CPU", "sender CPU", "broker CPU"]


def table(rows: list[Row]) -> str:
    cells = [HEADERS] + [r.cells() for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADERS))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
             for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


# -- the bare baseline ------------------------------------------------------------------------

async def bare_server(port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frames = FrameReader(reader, 1 << 20)
        while True:
            frame = await frames.next()
            if frame is None:
                break
            ack = build_ack(parse(frame.data), "AA")
            writer.write(START + ack.encode() + END)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


# -- scenarios --------------------------------------------------------------------------------

def messages(n: int, adt_only: bool) -> list[str]:
    stream = traffic(seed=1)
    if adt_only:
        stream = (m for m in stream if "|ADT^" in m[:120])
    return list(itertools.islice(stream, n))


async def run_bare(n: int, connections: int, workdir: Path) -> Row:
    port = free_port()
    proc = Process("bare", ["-m", "bench.mllp", "--bare-server", str(port)], workdir)
    try:
        await wait_port(port, proc)
        msgs = messages(n, adt_only=False)
        cpu0, sender0 = proc.cpu_seconds(), time.process_time()
        report = await HisSender("127.0.0.1", port, connections=connections).send(msgs)
        elapsed = report.finished - report.started
        return Row("bare MLLP (no store)", n, n / elapsed, percentile(report.latencies, .5),
                   percentile(report.latencies, .99), float("nan"),
                   (proc.cpu_seconds() - cpu0) / n,
                   sender_cpu=(time.process_time() - sender0) / n)
    finally:
        proc.stop()


def engine_toml(workdir: Path, *, port: int, admin: int, dest: str, queue: str,
                strict: bool, mapping_workers: int = 0) -> str:
    queue_toml = 'backend = "sqlite"' if queue == "sqlite" else (
        f'backend = "rabbitmq"\nhost = "{RABBITMQ}"\nprefix = "{workdir.name}"')
    return f"""
mappings_dir = "{REPO / 'mappings'}"
mapping_workers = {mapping_workers}
[store]
path = "{workdir / 'bench.db'}"
synchronous = "FULL"
[queue]
{queue_toml}
[admin]
listen = "127.0.0.1:{admin}"
token = "${{HB_BENCH_TOKEN}}"
[logging]
level = "WARNING"
[[channels]]
name = "bench"
source = {{ type = "mllp", listen = "127.0.0.1:{port}", strict = {str(strict).lower()} }}
[[channels.destinations]]
{dest}
"""


async def run_engine(
    label: str, n: int, connections: int, workdir: Path, *, queue: str, destination: str,
    mapping: str | None, rate: float | None = None, strict: bool = False,
    mapping_workers: int = 0, dest_connections: int = 8, fhir_concurrency: int = 128,
    transaction_group: int = 64, transaction_interval: float = 0.005,
) -> Row:
    port, admin_port, peer_port = free_port(), free_port(), free_port()
    token = secrets.token_hex(16)
    env = {"HB_BENCH_TOKEN": token}
    run_dir = Path(tempfile.mkdtemp(dir=workdir))
    if destination == "fhir":
        peer = Process("fhir", ["-m", "engine.cli", "simulate", "fhir", "--listen",
                                f"127.0.0.1:{peer_port}"], run_dir)
        dest = (f'name = "fhir"\ntype = "fhir"\nbase_url = "http://127.0.0.1:{peer_port}/fhir"\n'
                f'concurrency = {fhir_concurrency}\nmapping = "{mapping}"\n'
                f'transaction_group = {transaction_group}\n'
                f'transaction_interval = {transaction_interval}')
    else:
        peer = Process("receiver", ["-m", "engine.cli", "simulate", "his", "receive",
                                    "--listen", f"127.0.0.1:{peer_port}"], run_dir)
        dest = (f'name = "cdr"\ntype = "mllp"\nhost = "127.0.0.1"\nport = {peer_port}\n'
                f'connections = {dest_connections}\nconcurrency = {dest_connections}')
    config = run_dir / "config.toml"
    config.write_text(engine_toml(run_dir, port=port, admin=admin_port, dest=dest, queue=queue,
                                  strict=strict, mapping_workers=mapping_workers))
    engine = Process("engine", ["-m", "engine.cli", "serve", "--config", str(config)], run_dir,
                     env)
    admin = f"http://127.0.0.1:{admin_port}"
    try:
        await wait_port(peer_port, peer)
        await wait_port(port, engine)
        await wait_port(admin_port, engine)
        msgs = messages(n, adt_only=destination == "fhir")
        cpu0 = engine.cpu_seconds()
        workers0 = engine.cpu_seconds(children=True) - cpu0
        peer0, sender0 = peer.cpu_seconds(), time.process_time()
        brokers = broker_pids() if queue == "rabbitmq" else []
        broker0 = sum(process_cpu(pid) for pid in brokers)
        started = time.time()
        report = await HisSender("127.0.0.1", port, connections=connections).send(msgs,
                                                                                  rate=rate)
        accepted = report.count("AA")
        deadline = time.monotonic() + 120
        while await metric_value(admin, token, "hisbridge_deliveries_sent_total") < accepted:
            if time.monotonic() > deadline:
                raise RuntimeError(f"deliveries did not finish:\n{engine.tail()}")
            await asyncio.sleep(0.05)
        finished = time.time()
        cpu = engine.cpu_seconds() - cpu0
        workers = engine.cpu_seconds(children=True) - cpu - cpu0 - workers0
        peer_cpu, sender_cpu = peer.cpu_seconds() - peer0, time.process_time() - sender0
        broker_cpu = sum(process_cpu(pid) for pid in brokers) - broker0
        if destination == "fhir":
            async with aiohttp.ClientSession() as s, s.get(
                    f"http://127.0.0.1:{peer_port}/_control/arrivals") as r:
                arrivals = await r.json()
            e2e = percentile([at - id_time(mid) for mid, at in arrivals], .99)
            finished = max(at for _, at in arrivals)
        else:
            e2e = histogram_quantile(
                await histogram(admin, token, "hisbridge_end_to_end_seconds"), .99)
        if accepted != n:
            print(f"warning: {label}: {n - accepted} messages not accepted "
                  f"({report.errors[:3]})", file=sys.stderr)
        return Row(label, accepted, accepted / (finished - started),
                   percentile(report.latencies, .5), percentile(report.latencies, .99), e2e,
                   cpu / max(1, accepted),
                   workers / max(1, accepted) if mapping_workers else float("nan"),
                   peer_cpu / max(1, accepted), sender_cpu / max(1, accepted),
                   broker_cpu / max(1, accepted) if brokers else float("nan"))
    finally:
        engine.stop()
        peer.stop()
        if queue == "rabbitmq":
            from engine.config import load_config
            from queues.rabbitmq.admin import drop_topology

            cfg = load_config(config).queue
            assert cfg.backend == "rabbitmq"
            await drop_topology(cfg, ["channel:bench", "dest:bench/fhir", "dest:bench/cdr"])


def broker_pids() -> list[int]:
    """The local RabbitMQ node's Erlang VM (``beam.smp``), whose CPU the run also uses."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "beam.smp":
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def find_mapping() -> str | None:
    for name in ADT_MAPPING_CANDIDATES:
        if (REPO / "mappings" / f"{name}.toml").exists():
            return name
    return None


async def main_async(args: argparse.Namespace) -> int:
    mapping = args.mapping or find_mapping()
    destination = args.destination or ("fhir" if mapping else "mllp")
    if destination != "fhir":
        mapping = None  # the MLLP peer takes the HL7 as it came
    workdir = Path(tempfile.mkdtemp(prefix="hisbridge-bench-"))
    rows: list[Row] = []
    wanted = args.scenarios.split(",")
    common = dict(queue=args.queue, destination=destination, mapping=mapping,
                  mapping_workers=args.mapping_workers, dest_connections=args.dest_connections,
                  fhir_concurrency=args.fhir_concurrency,
                  transaction_group=args.transaction_group,
                  transaction_interval=args.transaction_interval)
    if "bare" in wanted:
        rows.append(await run_bare(args.messages, args.connections, workdir))
    label = f"engine ({args.queue})" + (
        f" + {args.mapping_workers} mapping worker(s)" if args.mapping_workers else "")
    if "engine" in wanted:
        rows.append(await run_engine(label, args.messages, args.connections,
                                     workdir, **common))  # type: ignore[arg-type]
    if "latency" in wanted:
        n = int(args.rate * args.latency_seconds)
        rows.append(await run_engine(f"{label} @ {args.rate:g}/s", n,
                                     args.connections, workdir, rate=args.rate,
                                     **common))  # type: ignore[arg-type]
    if "hl7apy" in wanted:
        n = min(args.messages, 3000)
        rows.append(await run_engine(f"engine + hl7apy strict ({args.queue})", n,
                                     args.connections, workdir, strict=True,
                                     **common))  # type: ignore[arg-type]
    print()
    print(f"machine: {machine()} · {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"destination: {destination}" + (f" (mapping {mapping})" if mapping else "")
          + f" · connections: {args.connections}")
    print(table(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.mllp", description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=20_000)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--latency-seconds", type=float, default=10.0)
    p.add_argument("--queue", choices=["sqlite", "rabbitmq"], default="sqlite")
    p.add_argument("--destination", choices=["fhir", "mllp"], default=None)
    p.add_argument("--mapping", default=None)
    p.add_argument("--mapping-workers", type=int, default=0,
                   help="run mappings in this many worker processes (engine mapping_workers)")
    p.add_argument("--dest-connections", type=int, default=8,
                   help="connections (and concurrency) of the MLLP destination")
    p.add_argument("--fhir-concurrency", type=int, default=128,
                   help="deliveries in flight to the FHIR simulator (FHIR concurrency)")
    p.add_argument("--transaction-group", type=int, default=64,
                   help="transaction Bundles merged into one request (FHIR transaction_group)")
    p.add_argument("--transaction-interval", type=float, default=0.005,
                   help="seconds between grouped FHIR requests (FHIR transaction_interval)")
    p.add_argument("--scenarios", default="bare,engine,latency,hl7apy")
    p.add_argument("--bare-server", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.bare_server:
        asyncio.run(bare_server(args.bare_server))
        return 0
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
