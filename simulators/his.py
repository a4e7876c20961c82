"""HIS simulator: sends ADT and DFT traffic over MLLP and receives messages back.

``HisSender`` plays the HIS interface engine's client side (several connections, one message
in flight per connection, ACK checked against MSH-10). ``HisReceiver`` is an MLLP server the
engine delivers to, with switchable behaviour (AA, AE, AR, silence, slowness) for tests.

Run alone: ``hisbridge simulate his send --to 127.0.0.1:2575 --count 100 [--batch 50]`` or
``hisbridge simulate his receive --listen 127.0.0.1:2577``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from adapters.mllp import END, START, FrameReader
from engine.errors import RejectedInput
from engine.hl7 import Hl7Message, build_ack, parse
from engine.hl7_batch import answer_acks
from simulators.hl7_messages import adt, batch_frame, dft
from simulators.patients import Charge, Patient, PatientFactory, Visit


def traffic(seed: int | None = None, *, facility: str = "SYFYY",
            paid_share: float = 0.6) -> Iterator[str]:
    """An endless, realistic mix: registrations, admissions, updates, charges, discharges.

    Each visit's charges come as one DFT^P03 batch. An outpatient batch is paid on the spot
    with probability ``paid_share`` (self-paying patients at the window, the kiosk or on their
    phone: a PY line and PV1-49); in-patient batches run against the deposit and stay unpaid.
    """
    factory = PatientFactory(seed)
    rng = random.Random(seed)
    while True:
        p = factory.patient()
        v = factory.visit()
        yield adt("A01" if v.kind == "I" else "A04", p, v, facility=facility)
        if rng.random() < 0.2:
            p.phone = f"1{rng.choice('3589')}{rng.randrange(10**9):09d}"
            yield adt("A08", p, v, facility=facility)
        charges = factory.charges(v)
        payment = None
        if v.kind == "O" and rng.random() < paid_share:
            payment = factory.payment(v, charges)
        yield dft(p, v, charges, facility=facility, payment=payment, batch=f"B{v.number[1:]}01")
        if v.kind == "I" and rng.random() < 0.5:
            yield adt("A03", p, v, facility=facility)


def outpatient_visit(p: Patient, v: Visit, charges: list[Charge], *, batch: str,
                     facility: str = "SYFYY") -> list[str]:
    """What the HIS sends for one outpatient visit the front desk registered: the
    registration (ADT^A04) and the visit's charges as one unpaid DFT^P03 batch. For an
    insured visit (``v.coverage``) both carry the insurance visit and person (PV1-50, PID-3
    ``SN``, IN1), so the engine can upload the fees to the insurance platform (2204)."""
    return [adt("A04", p, v, facility=facility),
            dft(p, v, charges, facility=facility, batch=batch)]


@dataclass
class SendReport:
    acks: dict[str, str] = field(default_factory=dict)  # control id → MSA-1
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    finished: float = 0.0

    @property
    def accepted(self) -> list[str]:
        return [cid for cid, code in self.acks.items() if code in ("AA", "CA")]

    def count(self, code: str) -> int:
        return sum(1 for c in self.acks.values() if c == code)


class HisSender:
    """Sends messages over ``connections`` MLLP connections, optionally at a fixed rate.

    With ``batch_size`` > 1 each frame is an HL7 batch (BHS ... BTS) of that many messages,
    as a HIS sends a day's charges, and each message is checked against its ACK in the
    acknowledgement batch; a message's latency is then its batch's.
    """

    def __init__(self, host: str, port: int, *, connections: int = 1,
                 ack_timeout: float = 30.0, encoding: str = "utf-8",
                 batch_size: int = 1) -> None:
        self.host, self.port = host, port
        self.connections = connections
        self.ack_timeout = ack_timeout
        self.encoding = encoding
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.batch_size = batch_size

    async def send(
        self, messages: Iterable[str | bytes], *, rate: float | None = None,
        on_ack: Callable[[str, str, float], None] | None = None,
    ) -> SendReport:
        report = SendReport()
        source = iter(messages)
        lock = asyncio.Lock()
        interval = 1.0 / rate if rate else 0.0
        next_at = [time.perf_counter()]

        async def take() -> list[bytes]:
            """The next frame's messages (a batch's worth), [] at the end."""
            async with lock:
                items = list(itertools.islice(source, self.batch_size))
                if interval and items:
                    now = time.perf_counter()
                    wait = next_at[0] - now
                    next_at[0] = max(now, next_at[0]) + interval * len(items)
                    if wait > 0:
                        await asyncio.sleep(wait)
                return [i.encode(self.encoding) if isinstance(i, str) else i for i in items]

        async def worker() -> None:
            conn: list[asyncio.StreamWriter] = []
            try:
                await exchange_all(conn)
            finally:
                for writer in conn:
                    writer.close()
                    with contextlib.suppress(Exception):
                        await writer.wait_closed()

        async def exchange_all(conn: list[asyncio.StreamWriter]) -> None:
            frames: FrameReader | None = None
            while True:
                raws = await take()
                if not raws:
                    return
                cids = [_control_id(raw) for raw in raws]
                data = raws[0] if self.batch_size == 1 else batch_frame(raws)
                for _attempt in range(3):
                    try:
                        if not conn:
                            reader, writer = await asyncio.open_connection(self.host, self.port)
                            conn.append(writer)
                            frames = FrameReader(reader, 1 << 24)
                        assert frames is not None
                        t0 = time.perf_counter()
                        conn[0].write(START + data + END)
                        await conn[0].drain()
                        async with asyncio.timeout(self.ack_timeout):
                            frame = await frames.next()
                        if frame is None:
                            raise ConnectionError("closed before ACK")
                        latency = time.perf_counter() - t0
                        record(cids, answer_acks(frame.data), latency)
                        break
                    except (OSError, ConnectionError, TimeoutError, RejectedInput) as exc:
                        report.errors.append(f"{cids[0]}: {type(exc).__name__} {exc}")
                        while conn:
                            conn.pop().close()
                        await asyncio.sleep(0.2)

        def record(cids: list[str], acks: list[Hl7Message], latency: float) -> None:
            if len(acks) == 1 and len(cids) > 1:
                # A batch refused as a whole: its one ACK answers every message in it.
                acks = acks * len(cids)
            if len(acks) != len(cids):
                report.errors += [f"{cid}: {len(acks)} ACK(s) for {len(cids)} message(s)"
                                  for cid in cids]
                return
            for cid, ack in zip(cids, acks, strict=True):
                code = ack.get("MSA", 1)
                if ack.get("MSA", 2) and ack.get("MSA", 2) != cid:
                    report.errors.append(f"{cid}: ACK for {ack.get('MSA', 2)}")
                report.acks[cid] = code
                report.latencies.append(latency)
                if on_ack:
                    on_ack(cid, code, latency)

        await asyncio.gather(*(worker() for _ in range(self.connections)))
        report.finished = time.perf_counter()
        return report


def _control_id(raw: bytes) -> str:
    try:
        return parse(raw).control_id
    except RejectedInput:
        return ""


class HisReceiver:
    """An MLLP server that records what it receives and answers per ``mode``.

    Modes: ``AA`` accept; ``AE``/``AR`` refuse; ``silent`` never answer; ``close`` drop the
    connection. ``delay`` adds latency before each answer. ``fail_first`` answers AE to the
    first n messages, then AA.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self.mode = "AA"
        self.delay = 0.0
        self.fail_first = 0
        self.received: list[str] = []  # control ids accepted, in arrival order
        self.bodies: list[bytes] = []
        self.seen = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._conns):
                w.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        frames = FrameReader(reader, 1 << 22)
        try:
            while True:
                frame = await frames.next()
                if frame is None:
                    return
                self.seen += 1
                if self.delay:
                    await asyncio.sleep(self.delay)
                mode = self.mode
                if self.fail_first > 0:
                    self.fail_first -= 1
                    mode = "AE"
                if mode == "silent":
                    continue
                if mode == "close":
                    return
                try:
                    msg = parse(frame.data)
                except RejectedInput as exc:
                    writer.write(START + build_ack(None, "AR", text=str(exc)).encode() + END)
                    await writer.drain()
                    continue
                if mode == "AA":
                    self.received.append(msg.control_id)
                    self.bodies.append(frame.data)
                ack = build_ack(msg, mode, text="" if mode == "AA" else f"simulated {mode}",
                                error_code=None if mode == "AA" else "207")
                writer.write(START + ack.encode() + END)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._conns.discard(writer)
            writer.close()


async def _main(args: argparse.Namespace) -> int:
    if args.action == "receive":
        host, _, port = args.listen.rpartition(":")
        receiver = HisReceiver(host, int(port))
        receiver.mode = args.mode
        await receiver.start()
        print(f"HIS receiver listening on {host}:{receiver.port} (mode {args.mode})")
        try:
            while True:
                await asyncio.sleep(5)
                print(f"received {len(receiver.received)}")
        finally:
            await receiver.stop()
    host, _, port = args.to.rpartition(":")
    sender = HisSender(host, int(port), connections=args.connections, batch_size=args.batch)
    msgs = itertools.islice(traffic(args.seed), args.count)
    report = await sender.send(msgs, rate=args.rate)
    elapsed = report.finished - report.started
    print(f"sent {len(report.acks)} in {elapsed:.2f}s: AA {report.count('AA')}, "
          f"AE {report.count('AE')}, AR {report.count('AR')}, errors {len(report.errors)}")
    return 0 if report.count("AA") == len(report.acks) else 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    send = sub.add_parser("send", help="send ADT/DFT traffic to an MLLP listener")
    send.add_argument("--to", default="127.0.0.1:2575")
    send.add_argument("--count", type=int, default=100)
    send.add_argument("--rate", type=float, default=None, help="messages per second")
    send.add_argument("--connections", type=int, default=2)
    send.add_argument("--seed", type=int, default=None)
    send.add_argument("--batch", type=int, default=1,
                      help="messages per frame, sent as an HL7 batch (BHS ... BTS) when > 1")
    recv = sub.add_parser("receive", help="an MLLP server that records and acknowledges")
    recv.add_argument("--listen", default="127.0.0.1:2577")
    recv.add_argument("--mode", default="AA", choices=["AA", "AE", "AR", "silent", "close"])


def main(args: argparse.Namespace) -> int:
    return asyncio.run(_main(args))
