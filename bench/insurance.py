"""Insurance round trips against the simulator, and the adapters' own overhead per call.

    python -m bench.insurance [--calls 2000] [--concurrency 16]

The simulator runs in its own process (x-tif gateway check on, SQLite state) and reports
its processing time per answer in ``X-Sim-Elapsed-Us``. For each scenario this command:

1. sends ``--calls`` calls one at a time through the destination (``send(envelope)``, as the
   engine's destination worker does) and records, per call, the total time and the
   simulator's own time; **overhead = total - simulator time**: our adapter (envelope,
   signature, validation of input and output, JSON or zeep), aiohttp on both ends and the
   loopback;
2. sends the same calls again as a bare ``aiohttp`` POST of a pre-built request (no adapter)
   for the transport's own share of that overhead; and records, per call, this process's
   CPU time (adapter and aiohttp client, without any waiting), which is what the engine
   spends per call;
3. times the adapter's own work per call without any I/O (``own``: reading the envelope
   body, validating the input, building and signing the request, decoding and validating
   the answer; for SOAP, the request and reply codec (plain or zeep) and the hostile-XML checks);
4. sends ``--calls`` calls with ``--concurrency`` in flight for round trips per second.

Scenarios: national 1101 (person info), national 2206 (pre-settlement: a larger answer with
every settlement figure checked), regional ASMX ``GetPersonInfo`` and regional pipe ``1001``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from lxml import etree

from adapters.nhsa import NhsaDestination, NhsaDestinationConfig
from adapters.nhsa.envelope import (
    decode_answer,
    decode_json,
    encode_json,
    encode_request,
    now_text,
)
from adapters.nhsa.transactions import lookup
from adapters.soap import _HOSTILE, SoapDestination, SoapDestinationConfig
from bench.processes import (
    Process,
    histogram,
    histogram_quantile,
    machine,
    metric_value,
    percentile,
    wait_port,
)
from queues.contract import Envelope
from tests.conftest import free_port

ELAPSED = "X-Sim-Elapsed-Us"
CARD = "D44039900001"


@dataclass
class Row:
    name: str
    calls: int
    rps: float
    total: list[float]
    peer: list[float]
    overhead: list[float]
    bare_overhead: list[float]
    cpu: list[float]
    own: list[float]


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:.3f}"


async def measure(send: Callable[[int], Awaitable[float | None]], calls: int
                  ) -> tuple[list[float], list[float], list[float]]:
    """Per call: wall time, the simulator's reported time, and this process's CPU time
    (the adapter plus the aiohttp client, without the simulator or the waiting)."""
    totals, peers, cpu = [], [], []
    for i in range(calls):
        started, cpu_started = time.perf_counter(), time.process_time()
        peer = await send(i)
        totals.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
        peers.append(peer or 0.0)
    return totals, peers, cpu


async def throughput(send: Callable[[int], Awaitable[Any]], calls: int,
                     concurrency: int) -> float:
    counter = iter(range(calls))

    async def worker() -> None:
        for i in counter:
            await send(i)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return calls / (time.perf_counter() - started)


async def bare_post(http: aiohttp.ClientSession, url: str, body: Callable[[int], bytes],
                    headers: Callable[[], dict[str, str]], calls: int
                    ) -> tuple[list[float], bytes]:
    """Overheads of pre-built POSTs, and the last raw answer (for the codec timing)."""
    overheads, raw = [], b""
    for i in range(calls):
        data, hdrs = body(i), headers()
        started = time.perf_counter()
        async with http.post(url, data=data, headers=hdrs) as r:
            raw = await r.read()
            peer = int(r.headers.get(ELAPSED, "0")) / 1e6
        overheads.append(time.perf_counter() - started - peer)
    return overheads, raw


def timed(work: Callable[[], object], calls: int) -> list[float]:
    """Wall time of ``work`` per call, without any I/O: the adapter's own CPU work."""
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return times


async def national(sim_url: str, calls: int, concurrency: int) -> list[Row]:
    config = NhsaDestinationConfig.model_validate({
        "type": "nhsa", "name": "bench", "url": sim_url, "fixmedins_code": "H44030500001",
        "fixmedins_name": "深圳市示例人民医院", "mdtrtarea_admvs": "440300",
        "auth": {"scheme": "x-tif", "paasid": "bench", "token": "${BENCH_NHSA_TOKEN}"},
        "peer_time_header": ELAPSED, "concurrency": max(concurrency, 8),
    })
    dest: NhsaDestination = config.build("bench")
    await dest.start()
    rows = []
    try:
        person = {"data": {"mdtrt_cert_type": "03", "mdtrt_cert_no": CARD}}
        out = json.loads((await dest.send(Envelope("w", json.dumps(person).encode(),
                                                   {"infno": "1101"}, "json"))).response or b"")
        psn_no = out["baseinfo"]["psn_no"]
        visit = json.loads((await dest.send(Envelope("v", json.dumps({"data": {
            "psn_no": psn_no, "insutype": "310", "begntime": "2026-03-15 09:10:00",
            "mdtrt_cert_type": "03", "mdtrt_cert_no": CARD, "ipt_otp_no": "BENCH1",
            "dept_code": "K", "dept_name": "内科"}}).encode(),
            {"infno": "2201", "insuplc_admdvs": "440300"}, "json"))).response or b"")
        mdtrt_id = visit["data"]["mdtrt_id"]
        fees = {"feedetail": [{
            "feedetl_sn": str(i), "mdtrt_id": mdtrt_id, "psn_no": psn_no, "chrg_bchno": "B1",
            "fee_ocur_time": "2026-03-15 09:15:00", "med_list_codg": code,
            "medins_list_codg": "H", "det_item_fee_sumamt": amt, "cnt": cnt, "pric": pric,
            "bilg_dept_codg": "K", "bilg_dept_name": "内科"}
            for i, (code, cnt, pric, amt) in enumerate((
                ("001102000010000", "1", "10.00", "10.00"),
                ("XJ01CAA040A001010100001", "24", "0.55", "13.20"),
                ("XC07ABM070A001020100002", "14", "2.50", "35.00"),
                ("XN99ZZZ999Z999999999999", "1", "88.00", "88.00")))]}
        await dest.send(Envelope("f", json.dumps(fees).encode(),
                                 {"infno": "2204", "insuplc_admdvs": "440300"}, "json"))
        presettle = {"data": {
            "psn_no": psn_no, "mdtrt_cert_type": "03", "mdtrt_cert_no": CARD, "med_type": "11",
            "medfee_sumamt": "146.20", "psn_setlway": "01", "mdtrt_id": mdtrt_id,
            "chrg_bchno": "B1", "insutype": "310", "acct_used_flag": "1"}}
        for infno, body, name in (("1101", person, "national 1101 person info"),
                                  ("2206", presettle, "national 2206 pre-settlement")):
            raw = json.dumps(body, ensure_ascii=False).encode()
            headers = {"infno": infno, "insuplc_admdvs": "440300"}

            async def one(i: int, raw: bytes = raw, headers: dict[str, str] = headers
                          ) -> float | None:
                await dest.send(Envelope(f"m{i}", raw, headers, "json"))
                return dest.last_peer_time

            await measure(one, min(200, calls))  # warm up
            totals, peers, cpu = await measure(one, calls)
            client = dest.client
            sign_no = await client.session.sign_no()

            def prebuilt(i: int, infno: str = infno, raw: bytes = raw,
                         client: Any = client, sign_no: str = sign_no) -> bytes:
                fields = {"infno": infno, "msgid": client.new_msgid(),
                          "mdtrtarea_admvs": "440300", "insuplc_admdvs": "440300",
                          "recer_sys_code": "HIS", "infver": "V1.0", "opter_type": "1",
                          "opter": "b", "opter_name": "b", "inf_time": now_text(),
                          "fixmedins_code": "H44030500001", "fixmedins_name": "x",
                          "sign_no": sign_no}
                return encode_request(fields, raw)

            def signed(infno: str = infno, client: Any = client) -> dict[str, str]:
                return {"Content-Type": "application/json", **client.auth.headers(infno)}

            async with aiohttp.ClientSession() as http:
                bare, answer = await bare_post(http, client.url, prebuilt, signed, calls)
            transaction = lookup(infno)
            assert transaction is not None and transaction.output is not None
            output_model = transaction.output

            def codec(raw: bytes = raw, infno: str = infno, answer: bytes = answer,
                      client: Any = client, model: Any = output_model,
                      input_model: Any = transaction.input,
                      build: Callable[..., bytes] = prebuilt) -> None:
                doc = decode_json(raw)
                input_model.model_validate(doc)
                build(0, infno, encode_json(doc), client, "S")
                client.auth.headers(infno)
                decoded = decode_answer(answer, infno)
                model.model_validate(decoded.output)
                encode_json(decoded.output)

            own = timed(codec, calls)
            rps = await throughput(one, calls, concurrency)
            rows.append(Row(name, calls, rps, totals, peers,
                            [t - p for t, p in zip(totals, peers, strict=True)], bare, cpu,
                            own))
    finally:
        await dest.close()
    return rows


async def regional(sim_url: str, calls: int, concurrency: int) -> list[Row]:
    rows = []
    for shape, name in (("asmx", "regional ASMX GetPersonInfo"),
                        ("pipe", "regional pipe 1001")):
        settings: dict[str, Any] = {
            "type": "soap", "name": shape, "wsdl": f"{sim_url}/regional/{shape}?wsdl",
            "peer_time_header": ELAPSED, "concurrency": max(concurrency, 8)}
        if shape == "asmx":
            settings.update(code_path="/output/code", message_path="/output/message")
            envelope = Envelope("s", json.dumps([CARD, "", "op"]).encode(),
                                {"operation": "GetPersonInfo"}, "json")
        else:
            settings["pipe"] = {"org": "H44030500001", "user": "hisbridge",
                                "password": "${SIM_PIPE_PASSWORD}"}
            envelope = Envelope("s", f"<body><cardno>{CARD}</cardno></body>".encode(),
                                {"funcno": "1001"}, "xml")
        dest: SoapDestination = SoapDestinationConfig.model_validate(settings).build("bench")
        await dest.start()
        try:
            async def one(i: int, dest: SoapDestination = dest,
                          envelope: Envelope = envelope) -> float | None:
                await dest.send(envelope)
                return dest.last_peer_time

            await measure(one, min(200, calls))
            totals, peers, cpu = await measure(one, calls)
            op = "GetPersonInfo" if shape == "asmx" else "Invoke"
            args = [CARD, "", "op"] if shape == "asmx" else [
                dest._pipe_document(envelope, dest.config.pipe)]  # type: ignore[arg-type]
            message = dest._client.create_message(dest._service, op, *args)
            body = etree.tostring(message, xml_declaration=True, encoding="utf-8")
            action = dest._service._binding.get(op).soapaction
            soap_headers = {"Content-Type": "text/xml; charset=utf-8",
                            "SOAPAction": f'"{action}"'}
            async with aiohttp.ClientSession() as http:
                bare, answer = await bare_post(http, dest._address, lambda i, b=body: b,
                                               lambda h=soap_headers: h, calls)
            binding = dest._service._binding
            operation = binding.get(op)

            def codec(dest: SoapDestination = dest, envelope: Envelope = envelope,
                      answer: bytes = answer, operation: Any = operation,
                      binding: Any = binding) -> None:
                # What SoapDestination.send does around the HTTP exchange.
                name, args, kwargs = dest._arguments(envelope)
                plain = None if kwargs else dest._plain.get(name)
                body = plain.request(args) if plain is not None else None
                if body is None:
                    message = dest._client.create_message(dest._service, name, *args, **kwargs)
                    etree.tostring(message, xml_declaration=True, encoding="utf-8")
                _HOSTILE.search(answer)
                dest._result(name, dest._read_reply(binding, operation, plain, 200, answer,
                                                    {"Content-Type": "text/xml"}))

            own = timed(codec, calls)
            rps = await throughput(one, calls, concurrency)
            rows.append(Row(name, calls, rps, totals, peers,
                            [t - p for t, p in zip(totals, peers, strict=True)], bare, cpu,
                            own))
        finally:
            await dest.close()
    return rows


ENGINE_CONFIG = """
[store]
path = "{workdir}/engine.db"
synchronous = "FULL"
[admin]
listen = "127.0.0.1:{admin}"
token = "${{BENCH_ADMIN_TOKEN}}"
[logging]
level = "WARNING"
[[channels]]
name = "lookup"
source = {{ type = "http", listen = "127.0.0.1:{port}", path = "/lookup", content_type = "json" }}
[[channels.destinations]]
name = "nhsa"
type = "nhsa"
infno = "1101"
url = "{sim_url}"
fixmedins_code = "H44030500001"
fixmedins_name = "深圳市示例人民医院"
mdtrtarea_admvs = "440300"
insuplc_admdvs = "440300"
auth = {{ scheme = "x-tif", paasid = "bench", token = "${{BENCH_NHSA_TOKEN}}" }}
concurrency = {concurrency}
"""


@dataclass
class EngineRow:
    messages: int
    rps: float
    ack: list[float]
    e2e_p50: float
    e2e_p99: float
    cpu: float


async def through_engine(sim_url: str, workdir: Path, messages: int, concurrency: int
                         ) -> EngineRow:
    """Person lookups (1101) posted to a ``hisbridge serve`` process's HTTP source: stored,
    queued and sent to the simulator by the engine's NHSA destination."""
    port, admin_port = free_port(), free_port()
    admin_token = secrets.token_hex(16)
    config = workdir / "engine.toml"
    config.write_text(ENGINE_CONFIG.format(workdir=workdir, admin=admin_port, port=port,
                                           sim_url=sim_url, concurrency=concurrency),
                      encoding="utf-8")
    engine = Process("engine", ["-m", "engine.cli", "serve", "--config", str(config)], workdir,
                     env={"BENCH_ADMIN_TOKEN": admin_token})
    admin = f"http://127.0.0.1:{admin_port}"
    body = json.dumps({"data": {"mdtrt_cert_type": "03", "mdtrt_cert_no": CARD}}).encode()
    try:
        await wait_port(port, engine)
        await wait_port(admin_port, engine)
        acks: list[float] = []
        counter = iter(range(messages))
        async with aiohttp.ClientSession() as http:
            async def poster() -> None:
                for i in counter:
                    started = time.perf_counter()
                    async with http.post(f"http://127.0.0.1:{port}/lookup", data=body,
                                         headers={"Content-Type": "application/json",
                                                  "Idempotency-Key": f"bench-{i}"}) as r:
                        await r.read()
                        if r.status != 202:
                            raise RuntimeError(f"HTTP {r.status} from the engine")
                    acks.append(time.perf_counter() - started)

            cpu0 = engine.cpu_seconds()
            started = time.perf_counter()
            await asyncio.gather(*(poster() for _ in range(concurrency)))
            deadline = time.monotonic() + 120
            while await metric_value(admin, admin_token,
                                     "hisbridge_deliveries_sent_total") < messages:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"deliveries did not finish:\n{engine.tail()}")
                await asyncio.sleep(0.02)
            elapsed = time.perf_counter() - started
            cpu = engine.cpu_seconds() - cpu0
        e2e = await histogram(admin, admin_token, "hisbridge_end_to_end_seconds")
        return EngineRow(messages, messages / elapsed, acks, histogram_quantile(e2e, .5),
                         histogram_quantile(e2e, .99), cpu / messages)
    finally:
        engine.stop()


async def main_async(args: argparse.Namespace) -> None:
    token = secrets.token_hex(16)
    password = secrets.token_hex(8)
    os.environ["BENCH_NHSA_TOKEN"] = token
    os.environ["SIM_PIPE_PASSWORD"] = password
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        sim = Process("insurance-sim", ["-m", "simulators.insurance", "--port", str(port),
                                        "--db", str(Path(tmp) / "sim.db")], Path(tmp),
                      env={"SIM_XTIF_PAASID": "bench", "SIM_XTIF_TOKEN": token,
                           "SIM_PIPE_PASSWORD": password})
        try:
            await wait_port(port, sim)
            url = f"http://127.0.0.1:{port}"
            rows = await national(url, args.calls, args.concurrency)
            rows += await regional(url, args.calls, args.concurrency)
            engine_row = (await through_engine(url, Path(tmp), args.engine_messages,
                                               args.concurrency)
                          if args.engine_messages else None)
        finally:
            sim.stop()
    print(f"# insurance benchmark, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"# machine: {machine()}")
    print(f"# command: python -m bench.insurance --calls {args.calls} "
          f"--concurrency {args.concurrency} --engine-messages {args.engine_messages}")
    print("# times in ms; ovh = total - simulator time; bare = ovh of the same request as a"
          " pre-built aiohttp POST; cpu = this process's CPU per call (adapter + aiohttp"
          " client); own = the adapter's own work per call without I/O (codec, signature,"
          " validation)")
    header = (f"| {'scenario':<30} | {'calls':>5} | {'rt/s':>6} | {'total p50':>9} |"
              f" {'sim p50':>7} | {'ovh p50':>7} | {'ovh p99':>7} | {'bare p50':>8} |"
              f" {'bare p99':>8} | {'cpu p50':>7} | {'cpu p99':>7} | {'own p50':>7} |"
              f" {'own p99':>7} |")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for r in rows:
        print(f"| {r.name:<30} | {r.calls:>5} | {r.rps:>6.0f} | {ms(r.total, .5):>9} |"
              f" {ms(r.peer, .5):>7} | {ms(r.overhead, .5):>7} | {ms(r.overhead, .99):>7} |"
              f" {ms(r.bare_overhead, .5):>8} | {ms(r.bare_overhead, .99):>8} |"
              f" {ms(r.cpu, .5):>7} | {ms(r.cpu, .99):>7} | {ms(r.own, .5):>7} |"
              f" {ms(r.own, .99):>7} |")
    if engine_row is not None:
        e = engine_row
        print()
        print(f"# through the engine: HTTP source → store (synchronous=FULL) → queue → NHSA"
              f" destination (1101) → simulator, {args.concurrency} posts in flight; ACK ="
              " the engine's 202 after its commit, e2e = receipt to the platform's answer"
              " (ms); engine CPU per message (µs)")
        print("| scenario                       | messages | msg/s | ACK p50 | ACK p99 |"
              " e2e p50 | e2e p99 | engine CPU |")
        print("|--------------------------------|----------|-------|---------|---------|"
              "---------|---------|------------|")
        print(f"| {'national 1101 via hisbridge':<30} | {e.messages:>8} | {e.rps:>5.0f} |"
              f" {ms(e.ack, .5):>7} | {ms(e.ack, .99):>7} | {e.e2e_p50 * 1000:>7.1f} |"
              f" {e.e2e_p99 * 1000:>7.1f} | {e.cpu * 1e6:>10.0f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.insurance")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--engine-messages", type=int, default=3000,
                        help="person lookups through a hisbridge serve process (0: skip)")
    args = parser.parse_args(argv)
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
