"""HL7 batches (FHS/BHS ... BTS/FTS, or several MSH in one frame) over real MLLP and HTTP.

A batch's messages are stored all or none, each byte for byte, delivered in order, and
answered with an acknowledgement batch; a broken batch or message is refused with a
specific reason and nothing of it is stored.
"""

from __future__ import annotations

import random
from pathlib import Path

import aiohttp
import pytest

from engine.contracts import IngestResult
from engine.errors import RejectedInput
from engine.hl7_batch import answer_acks, answer_batch, is_batch, split_batch
from engine.runtime import Engine
from simulators.his import HisReceiver, HisSender
from simulators.hl7_messages import adt
from simulators.patients import PatientFactory
from tests.conftest import engine_config, free_port, wait_for
from tests.mllp_client import MllpClient

factory = PatientFactory(seed=23)


def message(cid: str) -> bytes:
    return adt("A04", factory.patient(), factory.visit("O"), cid=cid).encode()


def batch(*bodies: bytes, fhs: bool = True, bts: int | None = None) -> bytes:
    """FHS, BHS, the messages, BTS (with ``bts`` as its count, default the true one), FTS."""
    count = len(bodies) if bts is None else bts
    parts = [b"FHS|^~\\&|HIS|H1|HISBRIDGE||20260101||||F-77\r"] if fhs else []
    parts.append(b"BHS|^~\\&|HIS|H1|HISBRIDGE||20260101||||B-42\r")
    parts += [b.rstrip(b"\r") + b"\r" for b in bodies]
    parts.append(f"BTS|{count}\r".encode())
    if fhs:
        parts.append(b"FTS|1\r")
    return b"".join(parts)


def channel(receiver_port: int, source_extra: str = "") -> str:
    return f"""
        [[channels]]
        name = "his"
        source = {{ type = "mllp", listen = "127.0.0.1:0"{source_extra} }}
        [[channels.destinations]]
        name = "cdr"
        type = "mllp"
        host = "127.0.0.1"
        port = {receiver_port}
        ordered = true
        retry = {{ max_attempts = 50, initial_delay = 0.05, max_delay = 0.2 }}
    """


async def start(tmp_path: Path, engines: list[Engine], receiver: HisReceiver,
                source_extra: str = "", **queue: int) -> tuple[Engine, MllpClient]:
    config = engine_config(tmp_path, channel(receiver.port, source_extra))
    if queue:
        config = config.model_copy(update={"queue": config.queue.model_copy(update=queue)})
    engine = Engine(config)
    await engine.start()
    engines.append(engine)
    return engine, await MllpClient.connect(engine.source_port("his"))


def fields(answer: bytes, segment: bytes) -> list[str]:
    line = next(s for s in answer.split(b"\r") if s.startswith(segment))
    return line.decode().split("|")


# -- splitting (pure logic) --------------------------------------------------------------------


def test_a_single_message_is_not_a_batch_even_with_ts_in_its_text() -> None:
    single = message("ONE")
    assert not is_batch(single)
    assert not is_batch(single + b"NTE|1||TS BTS FTS MSH\r")
    assert is_batch(single + b"BTS|1\r")
    assert is_batch(single + message("TWO"))
    assert is_batch(b"\xef\xbb\xbfBHS|^~\\&\r")


def test_split_keeps_each_message_byte_for_byte() -> None:
    one = "MSH|^~\\&|HIS|H1|||1||ADT^A04|G1|P|2.5||||||GB 18030-2000\rPID|||1||张三\r"
    two = "MSH|^~\\&|HIS|H1|||1||ADT^A04|G2|P|2.5||||||GB 18030-2000\nPID|||2||李四"
    raw = batch(one.encode("gb18030"), two.encode("gb18030"))
    split = split_batch(raw)
    assert split.file_header is not None and split.file_header.endswith(b"F-77")
    assert [g.header is not None for g in split.groups] == [True]
    assert split.messages == [one.encode("gb18030").rstrip(b"\r"), two.encode("gb18030")]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"BHS|^~\\&\rEVN|A04\rMSH|^~\\&|A|B|||1||ADT^A04|1|P|2.5\r",
         r"segment 2 \(EVN\) is outside any message"),
        (b"BHS|^~\\&\rMSH|^~\\&|A|B|||1||ADT^A04|1|P|2.5\rBTS|2\r",
         r"BTS-1 says '2' but 1 messages in its batch arrived"),
        (b"BHS|^~\\&\rMSH|^~\\&|A|B|||1||ADT^A04|1|P|2.5\rBTS|x\r", "BTS-1 says 'x'"),
        (b"BHS|^~\\&\rMSH|^~\\&|A|B|||1||ADT^A04|1|P|2.5\rBTS|1\rFTS|2\r",
         r"FTS-1 says '2' but 1 batches"),
        (b"BHS|^~\\&\rMSH|^~\\&|A|B|||1||ADT^A04|1|P|2.5\rBTS|1\rMSH|^~\\&|A|B|||1||ADT^A04|2",
         "follows BTS: a new batch needs its own BHS"),
        (b"BHS|^~\\&\rMSH|^~\\&|A|B|||1||ADT^A04|1|P|2.5\rFHS|^~\\&\r",
         "a file header must be the first segment"),
        (b"BHS|^~\\&\rMSH|^~\\&|A|B|||1||ADT^A04|1|P|2.5\rFTS|1\rPID|1\r",
         "follows the file trailer FTS"),
        (b"MSH|^~\\&|A|B|||1||ADT^A04|1|P|2.5\rBTS|1\rBTS|1\r", "ends a batch that was not"),
        (b"FHS|^~\\&\rFTS|0\r", "holds no BHS or MSH"),
    ],
)
def test_broken_structures_are_refused_naming_the_segment(raw: bytes, reason: str) -> None:
    with pytest.raises(RejectedInput, match=reason):
        split_batch(raw)


def test_empty_batches_and_headerless_batches_split() -> None:
    assert split_batch(b"BHS|^~\\&\rBTS|0\r").messages == []
    split = split_batch(message("H1") + message("H2"))
    assert split.file_header is None and len(split.messages) == 2
    assert split.groups[0].header is None


class _Accepting:
    """Ingest for the pure-logic test below: takes every batch (no store involved)."""

    async def many(self, items: list[object]) -> list[IngestResult]:
        return [IngestResult(f"id-{n}", duplicate=False) for n in range(len(items))]


async def test_mutated_batches_get_an_answer_or_a_specific_refusal() -> None:
    """Bytes flipped, cut and inserted at random in a valid batch: never an exception other
    than RejectedInput, and every answer has one ACK per message, refusals with reasons."""
    rng = random.Random(5)
    base = batch(*(message(f"MUT-{i}") for i in range(5)))
    pieces = [b"\rMSH|", b"\rBHS|", b"\rBTS|", b"\rFTS|9", b"\rPID|", b"\r\r", b"\xe4\xb8"]
    answered = refused = 0
    for _ in range(400):
        data = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            at, op = rng.randrange(len(data)), rng.random()
            if op < 0.4:
                data[at] = rng.choice(b"\r\n|^~\\&\x0b\x1c\x00\xffMSHBTF019")
            elif op < 0.7:
                del data[at:at + rng.randint(1, 40)]
            else:
                data[at:at] = rng.choice(pieces)
        raw = bytes(data)
        if not is_batch(raw):
            continue
        try:
            answer = await answer_batch(raw, _Accepting(), "lab")  # type: ignore[arg-type]
        except RejectedInput as exc:
            refused += bool(str(exc))  # a refusal says why
            continue
        answered += 1
        acks = answer_acks(answer.body)
        assert len(acks) == answer.count == len(split_batch(raw).messages)
        for ack in acks:
            assert ack.get("MSA", 1) == answer.code
            assert answer.code == "AA" or ack.get("MSA", 3)
    assert answered > 100 and refused > 50


# -- over MLLP ---------------------------------------------------------------------------------


async def test_batch_is_stored_in_order_and_answered_with_an_ack_batch(
    tmp_path: Path, engines: list[Engine], receiver: HisReceiver
) -> None:
    engine, client = await start(tmp_path, engines, receiver)
    bodies = [message(f"B-{i}") for i in range(3)]
    answer = await client.exchange(batch(*bodies))
    # The headers mirror the input's: sender and receiver swapped, -12 naming its -11.
    fhs, bhs = fields(answer, b"FHS"), fields(answer, b"BHS")
    assert fhs[2:6] == ["HISBRIDGE", "", "HIS", "H1"] and fhs[11] == "F-77"
    assert bhs[2:6] == ["HISBRIDGE", "", "HIS", "H1"] and bhs[11] == "B-42"
    assert fields(answer, b"BTS")[1] == "3" and fields(answer, b"FTS")[1] == "1"
    acks = answer_acks(answer)
    assert [(a.get("MSA", 1), a.get("MSA", 2)) for a in acks] == [
        ("AA", "B-0"), ("AA", "B-1"), ("AA", "B-2")]
    await wait_for(lambda: receiver.received == ["B-0", "B-1", "B-2"])
    for i, body in enumerate(bodies):
        stored = await engine.store.search(control_id=f"B-{i}")
        assert len(stored) == 1 and stored[0].body == body.rstrip(b"\r")
    # Sent again (the sender missed the answer): acknowledged, not processed twice.
    again = answer_acks(await client.exchange(batch(*bodies)))
    assert [a.get("MSA", 1) for a in again] == ["AA", "AA", "AA"]
    assert engine.metrics.duplicates.total() == 3
    assert (await client.send(message("AFTER"))).get("MSA", 1) == "AA"
    await wait_for(lambda: receiver.received == ["B-0", "B-1", "B-2", "AFTER"])
    await client.close()


async def test_a_message_twice_in_one_batch_is_stored_and_delivered_once(
    tmp_path: Path, engines: list[Engine], receiver: HisReceiver
) -> None:
    engine, client = await start(tmp_path, engines, receiver)
    twice = message("TWICE")
    acks = answer_acks(await client.exchange(batch(twice, message("OTHER"), twice)))
    assert [(a.get("MSA", 1), a.get("MSA", 2)) for a in acks] == [
        ("AA", "TWICE"), ("AA", "OTHER"), ("AA", "TWICE")]
    await wait_for(lambda: receiver.received == ["TWICE", "OTHER"])
    assert len(await engine.store.search(control_id="TWICE")) == 1
    assert engine.metrics.duplicates.total() == 1
    await client.close()


async def test_two_different_messages_with_one_control_id_refuse_the_batch(
    tmp_path: Path, engines: list[Engine], receiver: HisReceiver
) -> None:
    engine, client = await start(tmp_path, engines, receiver)
    acks = answer_acks(await client.exchange(
        batch(message("SAME-1"), message("OTHER-1"), message("SAME-1"))))
    assert [a.get("MSA", 1) for a in acks] == ["AR", "AR", "AR"]
    assert "used by two different messages of this batch" in acks[0].unescape(
        acks[0].get("MSA", 3))
    assert await engine.store.search(control_id="OTHER-1") == []
    assert engine.metrics.key_reused.total() == 1
    await client.close()


async def test_one_bad_message_refuses_the_whole_batch(
    tmp_path: Path, engines: list[Engine], receiver: HisReceiver
) -> None:
    engine, client = await start(tmp_path, engines, receiver)
    bad = message("BAD-2").replace(b"|BAD-2|", b"||", 1)  # MSH-10 missing
    acks = answer_acks(await client.exchange(batch(message("BAD-1"), bad, message("BAD-3"))))
    assert [a.get("MSA", 1) for a in acks] == ["AR", "AR", "AR"]
    assert "MSH-10" in acks[1].unescape(acks[1].get("MSA", 3))
    assert "message 2 of this batch" in acks[0].unescape(acks[0].get("MSA", 3))
    assert acks[0].get("MSA", 2) == "BAD-1" and acks[2].get("MSA", 2) == "BAD-3"
    assert await engine.store.search(control_id="BAD-1") == []
    assert await engine.store.search(control_id="BAD-3") == []
    assert engine.metrics.received.total() == 0
    await client.close()


async def test_a_strict_source_validates_every_message_of_a_batch(
    tmp_path: Path, engines: list[Engine], receiver: HisReceiver
) -> None:
    engine, client = await start(tmp_path, engines, receiver, ", strict = true")
    no_pv1 = b"\r".join(s for s in message("STRICT-2").split(b"\r")
                        if not s.startswith(b"PV1"))
    # Alone, the same message is refused by hl7apy's structure check ...
    alone = await client.send(no_pv1)
    assert alone.get("MSA", 1) == "AR"
    assert "Missing required child ADT_A01.PV1" in alone.unescape(alone.get("MSA", 3))
    # ... and in a batch it takes the batch with it.
    acks = answer_acks(await client.exchange(batch(message("STRICT-1"), no_pv1)))
    assert [a.get("MSA", 1) for a in acks] == ["AR", "AR"]
    assert "strict validation" in acks[1].unescape(acks[1].get("MSA", 3))
    assert await engine.store.search(control_id="STRICT-1") == []
    acks = answer_acks(await client.exchange(batch(message("STRICT-3"), message("STRICT-4"))))
    assert [a.get("MSA", 1) for a in acks] == ["AA", "AA"]
    await wait_for(lambda: receiver.received == ["STRICT-3", "STRICT-4"])
    await client.close()


async def test_a_truncated_batch_is_refused_with_one_ar(
    tmp_path: Path, engines: list[Engine], receiver: HisReceiver
) -> None:
    engine, client = await start(tmp_path, engines, receiver)
    acks = answer_acks(await client.exchange(batch(message("T-1"), message("T-2"), bts=3)))
    assert len(acks) == 1 and acks[0].get("MSA", 1) == "AR"
    assert "BTS-1 says '3' but 2" in acks[0].unescape(acks[0].get("MSA", 3))
    assert await engine.store.search(control_id="T-1") == []
    assert (await client.send(message("T-OK"))).get("MSA", 1) == "AA"
    await client.close()


async def test_several_messages_in_one_frame_are_a_batch(
    tmp_path: Path, engines: list[Engine], receiver: HisReceiver
) -> None:
    _, client = await start(tmp_path, engines, receiver)
    answer = await client.exchange(message("M-1") + message("M-2"))
    assert answer.startswith(b"BHS|") and fields(answer, b"BTS")[1] == "2"
    assert [a.get("MSA", 2) for a in answer_acks(answer)] == ["M-1", "M-2"]
    await wait_for(lambda: receiver.received == ["M-1", "M-2"])
    await client.close()


async def test_gbk_batch_is_stored_raw_and_answered_in_gbk(
    tmp_path: Path, engines: list[Engine], receiver: HisReceiver
) -> None:
    engine, client = await start(tmp_path, engines, receiver)
    text = message("GBK-B1").decode().replace("UNICODE UTF-8", "GB 18030-2000")
    raw = text.encode("gb18030")
    assert raw != text.encode()
    answer = await client.exchange(batch(raw))
    assert "MSA|AA|GBK-B1" in answer.decode("gb18030")
    stored = (await engine.store.search(control_id="GBK-B1"))[0]
    assert stored.body == raw.rstrip(b"\r")
    await wait_for(lambda: receiver.bodies == [raw.rstrip(b"\r")])
    await client.close()


async def test_full_store_answers_ae_for_every_message_and_keeps_none(
    tmp_path: Path, engines: list[Engine], receiver: HisReceiver
) -> None:
    await receiver.stop()  # nothing drains the destination queue
    engine, client = await start(tmp_path, engines, receiver, max_depth=2)
    acks = answer_acks(await client.exchange(batch(*(message(f"F-{i}") for i in range(3)))))
    assert [a.get("MSA", 1) for a in acks] == ["AE", "AE", "AE"]
    assert "cannot accept the batch now" in acks[0].unescape(acks[0].get("MSA", 3))
    assert await engine.store.search(control_id="F-0") == []
    # Two fit: a batch of two is taken whole.
    acks = answer_acks(await client.exchange(batch(message("F-0"), message("F-1"))))
    assert [a.get("MSA", 1) for a in acks] == ["AA", "AA"]
    await client.close()


async def test_a_source_set_to_reject_batches_says_so(
    tmp_path: Path, engines: list[Engine], receiver: HisReceiver
) -> None:
    engine, client = await start(tmp_path, engines, receiver, ', batch = "reject"')
    ack = (answer_acks(await client.exchange(batch(message("R-1")))))[0]
    assert ack.get("MSA", 1) == "AR"
    assert "one message per frame" in ack.unescape(ack.get("MSA", 3))
    assert await engine.store.search(control_id="R-1") == []
    await client.close()


async def test_the_his_simulator_sends_batches_and_checks_every_ack(
    tmp_path: Path, engines: list[Engine], receiver: HisReceiver
) -> None:
    engine, client = await start(tmp_path, engines, receiver)
    sender = HisSender("127.0.0.1", engine.source_port("his"), batch_size=10)
    report = await sender.send([message(f"S-{i}") for i in range(45)])  # the last holds 5
    assert report.count("AA") == 45 and not report.errors
    await wait_for(lambda: receiver.received == [f"S-{i}" for i in range(45)])
    # One malformed message: every message of its batch is answered AR.
    report = await sender.send([message("S-X1"), b"MSH|^~\\&|HIS\r"])
    assert report.acks == {"S-X1": "AR", "": "AR"}
    await client.close()


# -- over HTTP ---------------------------------------------------------------------------------


async def test_http_batch_is_stored_and_answered_200_or_refused_400(
    tmp_path: Path, engines: list[Engine], receiver: HisReceiver
) -> None:
    port = free_port()
    engine = Engine(engine_config(tmp_path, f"""
        [[channels]]
        name = "lab"
        source = {{ type = "http", listen = "127.0.0.1:{port}", content_type = "hl7v2" }}
        [[channels.destinations]]
        name = "cdr"
        type = "mllp"
        host = "127.0.0.1"
        port = {receiver.port}
    """))
    await engine.start()
    engines.append(engine)
    url = f"http://127.0.0.1:{port}/"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=batch(message("H-1"), message("H-2")),
                             headers={"Idempotency-Key": "one-key"}) as resp:
            assert resp.status == 200
            acks = answer_acks(await resp.read())
        # One Idempotency-Key on the request does not merge the batch's messages.
        assert [a.get("MSA", 2) for a in acks] == ["H-1", "H-2"]
        await wait_for(lambda: receiver.received == ["H-1", "H-2"])
        bad = batch(message("H-3"), b"MSH|^~\\&|HIS\r")
        async with http.post(url, data=bad) as resp:
            assert resp.status == 400
            acks = answer_acks(await resp.read())
        assert [a.get("MSA", 1) for a in acks] == ["AR", "AR"]
        async with http.post(url, data=batch(message("H-4"), bts=5)) as resp:
            assert resp.status == 400
            assert b"BTS-1 says '5'" in await resp.read()
    assert await engine.store.search(control_id="H-3") == []
    assert len(await engine.store.search(control_id="H-1")) == 1


async def test_http_batch_the_engine_cannot_take_now_is_503_with_retry_after(
    tmp_path: Path, engines: list[Engine], receiver: HisReceiver
) -> None:
    port = free_port()
    config = engine_config(tmp_path, f"""
        [[channels]]
        name = "lab"
        source = {{ type = "http", listen = "127.0.0.1:{port}", content_type = "hl7v2" }}
        [[channels.destinations]]
        name = "cdr"
        type = "mllp"
        host = "127.0.0.1"
        port = {receiver.port}
    """)
    engine = Engine(config.model_copy(update={
        "queue": config.queue.model_copy(update={"max_depth": 1})}))
    await engine.start()
    engines.append(engine)
    async with aiohttp.ClientSession() as http, http.post(
            f"http://127.0.0.1:{port}/", data=batch(message("Q-1"), message("Q-2"))) as resp:
        assert resp.status == 503 and resp.headers["Retry-After"] == "5"
        acks = answer_acks(await resp.read())
    assert [a.get("MSA", 1) for a in acks] == ["AE", "AE"]
    assert await engine.store.search(control_id="Q-1") == []

