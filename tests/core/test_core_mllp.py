"""MLLP in and out over real sockets: ACK after commit, duplicates, outages, bad input."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from engine.hl7_batch import answer_acks, is_batch, split_batch
from engine.runtime import Engine
from simulators.his import HisReceiver
from simulators.hl7_messages import adt
from simulators.patients import PatientFactory
from tests.conftest import SHARED, engine_config, wait_for
from tests.mllp_client import MllpClient

factory = PatientFactory(seed=7)


def message(cid: str) -> str:
    return adt("A04", factory.patient(), factory.visit("O"), cid=cid)


def config_for(tmp_path: Path, receiver_port: int, **extra: str) -> str:
    limit = extra.get("limit", "65536")
    attempts = extra.get("attempts", "50")
    return f"""
        [[channels]]
        name = "his"
        source = {{ type = "mllp", listen = "127.0.0.1:0", max_frame_bytes = {limit} }}
        {extra.get('channel', '')}
        [[channels.destinations]]
        name = "cdr"
        type = "mllp"
        host = "127.0.0.1"
        port = {receiver_port}
        ordered = {extra.get('ordered', 'true')}
        ack_timeout = 2.0
        retry = {{ max_attempts = {attempts}, initial_delay = 0.05, max_delay = 0.2 }}
    """


async def start(tmp_path: Path, engines: list[Engine], receiver: HisReceiver,
                **extra: str) -> tuple[Engine, MllpClient]:
    engine = Engine(engine_config(tmp_path, config_for(tmp_path, receiver.port, **extra)))
    await engine.start()
    engines.append(engine)
    client = await MllpClient.connect(engine.source_port("his"))
    return engine, client


async def test_message_flows_end_to_end_and_is_stored(tmp_path: Path, engines: list[Engine],
                                                      receiver: HisReceiver) -> None:
    engine, client = await start(tmp_path, engines, receiver)
    ack = await client.send(message("E2E-1"))
    assert ack.get("MSA", 1) == "AA" and ack.get("MSA", 2) == "E2E-1"
    await wait_for(lambda: receiver.received == ["E2E-1"])
    found = await engine.store.search(control_id="E2E-1")
    assert len(found) == 1 and found[0].message_type == "ADT^A04"
    await wait_for(lambda: engine.metrics.sent.total() == 1)
    events = await engine.store.events(found[0].id)
    # No filter or mapping on the channel: ingest queued it for the destination directly.
    assert [e.status for e in events] == ["received", "sent"]
    assert events[0].detail == "queued for cdr"
    assert events[1].destination == "cdr" and events[1].attempt == 1
    await client.close()


async def test_a_resend_with_a_rebuilt_msh_is_a_duplicate(
    tmp_path: Path, engines: list[Engine], receiver: HisReceiver
) -> None:
    engine, client = await start(tmp_path, engines, receiver)
    msg = message("RESEND-1")
    assert (await client.send(msg)).get("MSA", 1) == "AA"
    # The sender rebuilt the message after a lost ACK: a new MSH-7, CRLF line endings.
    msh, rest = msg.split("\r", 1)
    fields = msh.split("|")
    fields[6] = "20991231235959"
    rebuilt = "|".join(fields) + "\r\n" + rest.replace("\r", "\r\n")
    ack = await client.send(rebuilt)
    assert ack.get("MSA", 1) == "AA" and ack.get("MSA", 2) == "RESEND-1"
    assert engine.metrics.duplicates.total() == 1
    await wait_for(lambda: receiver.received == ["RESEND-1"])
    await client.close()


async def test_a_reused_control_id_is_refused_not_dropped(
    tmp_path: Path, engines: list[Engine], receiver: HisReceiver
) -> None:
    engine, client = await start(tmp_path, engines, receiver)
    assert (await client.send(message("REUSED-1"))).get("MSA", 1) == "AA"
    # The HIS restarted its counter: another patient's message under the same control id.
    # Acknowledged as a duplicate it would be lost without a trace; it is refused instead.
    ack = await client.send(message("REUSED-1"))
    assert ack.get("MSA", 1) == "AR" and ack.get("MSA", 2) == "REUSED-1"
    reason = ack.unescape(ack.get("MSA", 3))
    assert "was taken on" in reason and "by a different message" in reason
    assert ack.get("ERR", 3, 1) == "205"
    assert engine.metrics.key_reused.total() == 1 and engine.metrics.duplicates.total() == 0
    [stored] = await engine.store.search(control_id="REUSED-1")
    assert stored.id in reason
    # The same in a batch: the batch is refused whole, nothing of it is stored.
    acks = answer_acks(await client.exchange(
        b"BHS|^~\\&\r" + message("REUSED-2").encode() + message("REUSED-1").encode()))
    assert [a.get("MSA", 1) for a in acks] == ["AR", "AR"]
    assert await engine.store.search(control_id="REUSED-2") == []
    await wait_for(lambda: receiver.received == ["REUSED-1"])
    assert (await client.send(message("REUSED-3"))).get("MSA", 1) == "AA"
    await client.close()


async def test_a_key_held_past_its_window_is_free_again(
    tmp_path: Path, engines: list[Engine], receiver: HisReceiver
) -> None:
    # A counter that wrapped around: the control id comes back after the window (0.5 s
    # here, 7 days by default) on a different message, which is new; resends within the
    # window stay duplicates.
    engine, client = await start(tmp_path, engines, receiver,
                                 channel=f"dedup_window_days = {0.5 / 86_400}")
    first = message("WRAP-1")
    assert (await client.send(first)).get("MSA", 1) == "AA"
    assert (await client.send(first)).get("MSA", 1) == "AA"  # a resend
    assert engine.metrics.duplicates.total() == 1
    await asyncio.sleep(0.6)
    later = message("WRAP-1")
    assert (await client.send(later)).get("MSA", 1) == "AA"
    assert (await client.send(later)).get("MSA", 1) == "AA"  # its resend, within its window
    assert engine.metrics.duplicates.total() == 2 and engine.metrics.key_reused.total() == 0
    stored = await engine.store.search(control_id="WRAP-1")
    assert len(stored) == 2  # both kept, with their histories
    assert sorted(m.dedup_key is None for m in stored) == [False, True]
    await wait_for(lambda: receiver.received == ["WRAP-1", "WRAP-1"])
    await client.close()


def with_accept_type(text: str, accept: str) -> str:
    """The message with MSH-15 (accept acknowledgment type) set to ``accept``."""
    msh, rest = text.split("\r", 1)
    fields = msh.split("|")
    fields += [""] * (16 - len(fields))
    fields[14] = accept
    return "|".join(fields) + "\r" + rest


async def test_ack_mode_msh15_answers_as_the_sender_asked(
    tmp_path: Path, engines: list[Engine], receiver: HisReceiver
) -> None:
    """Enhanced mode (MSH-15 set): CA/CE/CR, sent always, never, on errors or on success."""
    _, original = await start(tmp_path, engines, receiver)
    ack = await original.send(with_accept_type(message("ORIG-1"), "AL"))
    assert ack.get("MSA", 1) == "AA"  # by default every answer is original mode
    await original.close()
    config = engine_config(tmp_path / "msh15", config_for(tmp_path, receiver.port).replace(
        "max_frame_bytes = 65536", 'max_frame_bytes = 65536, ack_mode = "msh15"'))
    engine = Engine(config)
    await engine.start()
    engines.append(engine)
    client = await MllpClient.connect(engine.source_port("his"))
    assert (await client.send(with_accept_type(message("ENH-AL"), "AL"))).get(
        "MSA", 1) == "CA"
    assert (await client.send(message("ENH-NONE").replace("|AL|NE|", "|||"))).get(
        "MSA", 1) == "AA"  # no MSH-15: original mode
    # NE: stored and delivered without an answer; ER: an answer only for an error.
    from adapters.mllp import END, START

    await client.send_raw(START + with_accept_type(message("ENH-NE"), "NE").encode() + END)
    await client.send_raw(START + with_accept_type(message("ENH-ER"), "ER").encode() + END)
    bad = with_accept_type(message("ENH-BAD"), "ER").replace("|ENH-BAD|", "||", 1)
    await client.send_raw(START + bad.encode() + END)
    refused = await client.read_ack()  # the first answer on the wire is the error's
    assert refused.get("MSA", 1) == "CR"
    assert "MSH-10" in refused.unescape(refused.get("MSA", 3))
    assert (await client.send(with_accept_type(message("ENH-SU"), "SU"))).get(
        "MSA", 1) == "CA"
    await wait_for(lambda: receiver.received[-5:] == [
        "ENH-AL", "ENH-NONE", "ENH-NE", "ENH-ER", "ENH-SU"])
    await client.close()


async def test_aa_only_after_durable_commit(tmp_path: Path, engines: list[Engine],
                                            receiver: HisReceiver) -> None:
    _, client = await start(tmp_path, engines, receiver)
    # Hold the database's write lock from another connection: the engine cannot commit.
    blocker = sqlite3.connect(tmp_path / "hisbridge.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        raw = message("COMMIT-1").encode()
        from adapters.mllp import END, START

        await client.send_raw(START + raw + END)
        with pytest.raises(TimeoutError):
            await client.read_ack(timeout=0.5)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    ack = await client.read_ack(timeout=10)
    assert ack.get("MSA", 1) == "AA"
    # The ACK came after the commit: another connection sees the message at once.
    check = sqlite3.connect(tmp_path / "hisbridge.db")
    assert check.execute("SELECT COUNT(*) FROM messages WHERE control_id = 'COMMIT-1'"
                         ).fetchone()[0] == 1
    check.close()
    await client.close()


async def test_duplicates_are_acknowledged_and_processed_once(
    tmp_path: Path, engines: list[Engine], receiver: HisReceiver
) -> None:
    engine, client = await start(tmp_path, engines, receiver)
    msg = message("DUP-1")
    for _ in range(3):
        ack = await client.send(msg)
        assert ack.get("MSA", 1) == "AA" and ack.get("MSA", 2) == "DUP-1"
    other = await MllpClient.connect(engine.source_port("his"))
    assert (await other.send(msg)).get("MSA", 1) == "AA"
    await wait_for(lambda: engine.metrics.sent.total() == 1)
    await asyncio.sleep(0.2)
    assert receiver.received == ["DUP-1"]
    assert engine.metrics.duplicates.total() == 3
    assert len(await engine.store.search(control_id="DUP-1")) == 1
    await client.close()
    await other.close()


async def test_destination_down_then_back_gets_everything_in_order(
    tmp_path: Path, engines: list[Engine], receiver: HisReceiver
) -> None:
    port = receiver.port
    engine, client = await start(tmp_path, engines, receiver)
    await receiver.stop()  # the peer is down: connections are refused
    ids = [f"ORD-{i:03d}" for i in range(40)]
    for cid in ids:
        assert (await client.send(message(cid))).get("MSA", 1) == "AA"
    await wait_for(lambda: engine.metrics.retried.total() >= 2)
    back = HisReceiver(port=port)
    await back.start()
    try:
        await wait_for(lambda: len(back.received) == len(ids), timeout=15)
        assert back.received == ids  # nothing lost, nothing reordered
        dest = engine.channels["his"].destinations[0]
        await wait_for(lambda: dest.health.state == "ok")
    finally:
        await back.stop()
    await client.close()


async def test_peer_ae_is_retried_and_ar_is_dead_lettered(
    tmp_path: Path, engines: list[Engine], receiver: HisReceiver
) -> None:
    engine, client = await start(tmp_path, engines, receiver)
    receiver.fail_first = 2  # AE twice, then AA
    await client.send(message("AE-1"))
    await wait_for(lambda: receiver.received == ["AE-1"])
    assert engine.metrics.retried.total() == 2
    receiver.mode = "AR"
    await client.send(message("AR-1"))
    queue = engine.channels["his"].destinations[0].queue
    await wait_for(lambda: engine.metrics.dead_lettered.total() == 1)
    dead = await engine.backend.dead_letters(queue)
    assert [d.envelope.message_id for d in dead] == [
        (await engine.store.search(control_id="AR-1"))[0].id]
    assert "peer answered AR" in dead[0].reason and "simulated AR" in dead[0].reason
    stored = (await engine.store.search(control_id="AR-1"))[0]
    assert stored.status == "dead_lettered"
    # Requeue after the peer is fixed: the dead letter is delivered.
    receiver.mode = "AA"
    assert await engine.backend.requeue(queue) == 1
    await wait_for(lambda: receiver.received == ["AE-1", "AR-1"])
    await client.close()


async def test_ack_codes_in_config_change_only_the_codes_they_name(
    tmp_path: Path, engines: list[Engine], receiver: HisReceiver
) -> None:
    text = config_for(tmp_path, receiver.port).replace(
        "ack_timeout = 2.0", 'ack_timeout = 2.0\n        ack_codes = { AE = "dead_letter" }')
    engine = Engine(engine_config(tmp_path, text))
    await engine.start()
    engines.append(engine)
    client = await MllpClient.connect(engine.source_port("his"))
    await client.send(message("CODE-AA"))  # AA is still success
    await wait_for(lambda: engine.metrics.sent.total() == 1)
    receiver.mode = "AE"
    await client.send(message("CODE-AE"))  # AE now dead-letters at once
    await wait_for(lambda: engine.metrics.dead_lettered.total() == 1)
    assert engine.metrics.retried.total() == 0
    await client.close()


async def test_retries_exhausted_dead_letter_with_history(
    tmp_path: Path, engines: list[Engine], receiver: HisReceiver
) -> None:
    engine, client = await start(tmp_path, engines, receiver, attempts="3", ordered="false")
    receiver.mode = "AE"
    await client.send(message("GIVEUP-1"))
    await wait_for(lambda: engine.metrics.dead_lettered.total() == 1)
    dead = (await engine.backend.dead_letters(engine.channels["his"].destinations[0].queue))[0]
    assert dead.failures == 3
    assert dead.reason.startswith("gave up after 3 attempts: peer answered AE")
    stored = (await engine.store.search(control_id="GIVEUP-1"))[0]
    statuses = [e.status for e in await engine.store.events(stored.id)]
    assert statuses == ["received", "retrying", "retrying", "dead_lettered"]
    await client.close()


async def test_malformed_frames_get_specific_answers_and_listener_keeps_serving(
    tmp_path: Path, engines: list[Engine], receiver: HisReceiver
) -> None:
    engine, client = await start(tmp_path, engines, receiver)
    cases = {
        b"not hl7 at all": "must start with an MSH segment",
        b"MSH|^~\\&|HIS|F|||20260101||ADT^A01||P|2.5": "MSH-10",
        b"MSH|^~\\&|HIS|F|||20260101|||C1|P|2.5": "MSH-9",
        b"MSH|^^^^|HIS|F|||20260101||ADT^A01|C2|P|2.5": "encoding characters",
        "MSH|^~\\&|HIS|F|||1||ADT^A01|C3|P|2.5\rPID|||张".encode("gbk"): "not valid utf-8",
    }
    for raw, reason in cases.items():
        ack = await client.send(raw)
        assert ack.get("MSA", 1) == "AR", raw
        assert reason in ack.unescape(ack.get("MSA", 3)), (raw, ack.text)
        assert ack.get("ERR", 3, 1) in ("100", "101", "102"), ack.text
    # MSA-2 still names the message when its control id could be read.
    ack = await client.send(b"MSH|^~\\&|HIS|F|||1|||C1|P|2.5")
    assert ack.get("MSA", 2) == "C1"
    # A start block inside a frame is a framing error, answered too.
    from adapters.mllp import END, START

    await client.send_raw(START + b"MSH|^~\\&|A" + START + b"MSH" + END)
    ack = await client.read_ack()
    assert ack.get("MSA", 1) == "AR" and "framing" in ack.unescape(ack.get("MSA", 3))
    # The same connection still serves valid messages.
    assert (await client.send(message("AFTER-BAD"))).get("MSA", 1) == "AA"
    await wait_for(lambda: receiver.received == ["AFTER-BAD"])
    assert engine.metrics.received.total() == 1
    await client.close()


async def test_frames_ended_by_0x1c_alone_are_answered(
    tmp_path: Path, engines: list[Engine], receiver: HisReceiver
) -> None:
    """Some devices and older HIS end a frame with 0x1C and no carriage return: waiting for
    the CR would hang the connection until the sender's ACK timeout."""
    _, client = await start(tmp_path, engines, receiver)
    from adapters.mllp import START

    await client.send_raw(START + message("FS-1").encode() + b"\x1c")
    assert (await client.read_ack()).get("MSA", 2) == "FS-1"
    # Two such frames back to back, then a standard one.
    await client.send_raw(START + message("FS-2").encode() + b"\x1c"
                          + START + message("FS-3").encode() + b"\x1c")
    assert [(await client.read_ack()).get("MSA", 2) for _ in range(2)] == ["FS-2", "FS-3"]
    assert (await client.send(message("FS-4"))).get("MSA", 1) == "AA"
    await wait_for(lambda: receiver.received == ["FS-1", "FS-2", "FS-3", "FS-4"])
    await client.close()


async def test_a_sender_stalled_mid_frame_is_disconnected(
    tmp_path: Path, engines: list[Engine], receiver: HisReceiver
) -> None:
    """A frame that begins and never ends would hold a connection slot for idle_timeout."""
    config = engine_config(tmp_path, config_for(tmp_path, receiver.port).replace(
        "max_frame_bytes = 65536", "max_frame_bytes = 65536, frame_timeout = 0.3"))
    engine = Engine(config)
    await engine.start()
    engines.append(engine)
    from adapters.mllp import START

    stalled = await MllpClient.connect(engine.source_port("his"))
    await stalled.send_raw(START + message("STALL-1").encode()[:40])
    other = await MllpClient.connect(engine.source_port("his"))
    assert (await other.send(message("OTHER-1"))).get("MSA", 1) == "AA"
    # The engine closes the stalled connection: the client reads the end of the stream.
    assert await asyncio.wait_for(stalled.reader.read(), 5) == b""
    assert await engine.store.search(control_id="STALL-1") == []
    assert (await other.send(message("OTHER-2"))).get("MSA", 1) == "AA"
    await stalled.close()
    await other.close()


async def test_oversized_frame_is_refused_and_not_buffered(
    tmp_path: Path, engines: list[Engine], receiver: HisReceiver
) -> None:
    engine, client = await start(tmp_path, engines, receiver, limit="65536")
    from adapters.mllp import END, START

    head = message("BIG-1").encode()
    filler = b"OBX|1|TX|||" + b"x" * 4096 + b"\r"
    # 8 MB streamed in pieces; the engine may hold at most one limit's worth of it.
    await client.send_raw(START + head)
    for _ in range(2048):
        client.writer.write(filler)
    await client.writer.drain()
    await client.send_raw(END)
    ack = await client.read_ack(timeout=20)
    assert ack.get("MSA", 1) == "AR"
    assert ack.get("MSA", 2) == "BIG-1"
    assert "frame too large" in ack.unescape(ack.get("MSA", 3))
    assert (await client.send(message("SMALL-1"))).get("MSA", 1) == "AA"
    assert len(await engine.store.search(control_id="BIG-1")) == 0
    await client.close()


async def test_frame_reader_memory_is_bounded() -> None:
    from adapters.mllp import END, START, FrameReader

    reader = asyncio.StreamReader(limit=1 << 16)
    frames = FrameReader(reader, limit=10_000)
    peak = 0
    original_fill = frames._fill

    async def tracking_fill() -> bool:
        nonlocal peak
        ok = await original_fill()
        peak = max(peak, len(frames.buf))
        return ok

    frames._fill = tracking_fill  # type: ignore[method-assign]
    reader.feed_data(START)
    for _ in range(200):
        reader.feed_data(b"y" * 50_000)
    reader.feed_data(END + START + b"MSH|^~\\&|A" + END)
    reader.feed_eof()
    first = await frames.next()
    assert first is not None and first.error is not None
    assert "10000010 bytes" in str(first.error) or "exceeds the limit" in str(first.error)
    assert peak < 10_000 + 2 * 65536
    second = await frames.next()
    assert second is not None and second.data == b"MSH|^~\\&|A"


async def test_every_corpus_file_gets_an_answer(
    tmp_path: Path, engines: list[Engine], receiver: HisReceiver
) -> None:
    # The corpus gathers other projects' fixtures, which reuse control ids for different
    # messages (refused with AR 205 when dedup is on): parsing is what is tested here.
    _, client = await start(tmp_path, engines, receiver, limit="1048576", channel="dedup = []")
    files = sorted((SHARED / "corpora" / "hl7v2").rglob("*.hl7"))
    codes: dict[str, int] = {}
    batches = 0
    for path in files:
        raw = path.read_bytes()
        acks = answer_acks(await client.exchange(raw))
        if len(acks) > 1 or (is_batch(raw) and acks[0].get("MSA", 1) == "AA"):
            # A batch is answered message by message, in order, or refused with one AR.
            batches += 1
            assert len(acks) == len(split_batch(raw).messages), path.name
        for ack in acks:
            code = ack.get("MSA", 1)
            codes[code] = codes.get(code, 0) + 1
            if code != "AA":
                assert ack.get("MSA", 3), f"{path.name}: rejection without a reason"
    assert set(codes) <= {"AA", "AR"}
    assert codes["AA"] > 250 and codes["AR"] > 20 and batches >= 15
    assert (await client.send(message("AFTER-CORPUS"))).get("MSA", 1) == "AA"
    await client.close()


async def test_full_queue_pushes_back_with_ae(tmp_path: Path, engines: list[Engine],
                                              receiver: HisReceiver) -> None:
    config = engine_config(tmp_path, config_for(tmp_path, receiver.port))
    engine = Engine(config.model_copy(update={
        "queue": config.queue.model_copy(update={"max_depth": 2})}))
    await engine.start()
    engines.append(engine)
    await receiver.stop()  # nothing drains the destination queue
    client = await MllpClient.connect(engine.source_port("his"))
    codes = [(await client.send(message(f"FULL-{i}"))).get("MSA", 1) for i in range(6)]
    assert codes[:2] == ["AA", "AA"]
    assert "AE" in codes
    ae = await client.send(message("FULL-X"))
    assert ae.get("MSA", 1) == "AE" and "cannot accept" in ae.unescape(ae.get("MSA", 3))
    assert engine.metrics.refused.total() >= 1
    await client.close()


async def test_gbk_message_is_accepted_stored_raw_and_forwarded_unchanged(
    tmp_path: Path, engines: list[Engine], receiver: HisReceiver
) -> None:
    engine, client = await start(tmp_path, engines, receiver)
    text = message("GBK-1").replace("UNICODE UTF-8", "GB 18030-2000")
    raw = text.encode("gb18030")
    assert raw != text.encode()  # really GBK bytes, not UTF-8
    from adapters.mllp import END, START

    await client.send_raw(START + raw + END)
    frame = await asyncio.wait_for(client.frames.next(), 10)
    assert frame is not None
    ack_text = frame.data.decode("gb18030")
    assert "MSA|AA|GBK-1" in ack_text and "GB 18030-2000" in ack_text
    await wait_for(lambda: receiver.received == ["GBK-1"])
    assert receiver.bodies[0] == raw  # forwarded byte for byte
    stored = (await engine.store.search(control_id="GBK-1"))[0]
    assert stored.body == raw
    await client.close()
