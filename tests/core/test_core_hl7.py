"""The HL7 tokenizer: parsing, encodings, rejections, escaping and acknowledgements."""

from __future__ import annotations

import pytest

from engine.errors import RejectedInput
from engine.hl7 import build_ack, escape, parse, same_content, split_segments, unescape
from tests.conftest import SHARED

ADT = (
    "MSH|^~\\&|HIS|SYFYY|HISBRIDGE|SYFYY|20260402141530||ADT^A01^ADT_A01|CTRL0001|P|2.5|||AL|NE||"
    "UNICODE UTF-8\rEVN|A01|20260402141530\r"
    "PID|1||0009876543^^^SYFYY^MR~330106196207120013^^^CHN^NNCHN||陈^国华^^^^^L||19620712|M\r"
)


def test_fields_components_and_repetitions() -> None:
    msg = parse(ADT.encode())
    assert msg.message_type == "ADT^A01"
    assert msg.control_id == "CTRL0001"
    assert msg.sending_facility == "SYFYY"
    assert msg.get("PID", 3, 1) == "0009876543"
    assert msg.get("PID", 3, 1, repetition=2) == "330106196207120013"
    assert msg.get("PID", 3, 5, repetition=2) == "NNCHN"
    assert msg.get("PID", 5, 2) == "国华"
    assert msg.get("PID", 99) == ""
    assert msg.get("ZZZ", 1) == ""
    assert msg.field_text("MSH", 2) == "^~\\&"


def test_gbk_message_decoded_by_msh18() -> None:
    text = ADT.replace("UNICODE UTF-8", "GBK")
    msg = parse(text.encode("gbk"))
    assert msg.encoding == "gb18030"
    assert msg.get("PID", 5, 1) == "陈"


def test_gbk_bytes_without_declaration_are_refused_with_reason() -> None:
    text = ADT.replace("UNICODE UTF-8", "")
    with pytest.raises(RejectedInput, match="not valid utf-8"):
        parse(text.encode("gbk"))
    # ...but a source configured for legacy GBK senders accepts them.
    assert parse(text.encode("gbk"), default_encoding="gb18030").get("PID", 5, 1) == "陈"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty message"),
        (b"hello world", "must start with an MSH segment"),
        (b"PID|1||123", "must start with an MSH segment"),
        (b"BHS|^~\\&|X\rMSH|^~\\&|A", "a batch"),
        (b"MSH|", "too short"),
        (b"MSHA^~\\&|A|B|C|D|E||ADT^A01|1|P|2.5", "field separator"),
        (b"MSH|^^\\&|A|B|C|D|E||ADT^A01|1|P|2.5", "encoding characters"),
        (b"MSH|^~\\&|A|B|C|D|E||ADT^A01||P|2.5", "MSH-10"),
        (b"MSH|^~\\&|A|B|C|D|E|||1|P|2.5", "MSH-9"),
        (b"MSH|^~\\&|A|B|C|D|E||ADT^A01|1|P|2.5||||||XYZ-42", "MSH-18"),
        (b"MSH|^~\\&|A|B|C|D|E||ADT^A01|1|P|2.5\rpid|1", "invalid name"),
    ],
)
def test_rejections_are_specific(raw: bytes, reason: str) -> None:
    with pytest.raises(RejectedInput, match=reason):
        parse(raw)


def test_line_feeds_between_segments_are_tolerated() -> None:
    msg = parse(ADT.replace("\r", "\r\n").encode())
    assert [s[:3] for s in msg.segments] == ["MSH", "EVN", "PID"]
    assert split_segments("A\nB\r\nC\r") == ["A", "B", "C"]


def test_escape_makes_hostile_values_inert() -> None:
    hostile = "a|b^c~d\\e&f\rPID|2\nOBX|1"
    escaped = escape(hostile)
    for ch in "|^~&\r\n":
        assert ch not in escaped
    assert unescape(escaped) == hostile.replace("\n", "\r")


def test_ack_echoes_control_id_and_reason() -> None:
    msg = parse(ADT.encode())
    ack = parse(build_ack(msg, "AE", text="store | busy", error_code="206").encode())
    assert ack.get("MSA", 1) == "AE"
    assert ack.get("MSA", 2) == "CTRL0001"
    assert ack.unescape(ack.get("MSA", 3)) == "store | busy"
    assert ack.get("ERR", 3, 1) == "206"
    assert ack.message_type == "ACK^A01"
    # Addressed back to the sender.
    assert ack.get("MSH", 5) == "HIS" and ack.get("MSH", 6) == "SYFYY"


def test_every_corpus_file_parses_or_is_rejected_specifically() -> None:
    files = sorted((SHARED / "corpora" / "hl7v2").rglob("*.hl7"))
    assert len(files) > 300
    accepted = rejected = 0
    for path in files:
        raw = path.read_bytes()
        try:
            msg = parse(raw)
        except RejectedInput as exc:
            reasons = (str(exc), exc.code)
            rejected += 1
        else:
            assert msg.control_id, path
            accepted += 1
            continue
        assert reasons[0], path
        assert reasons[1] in ("AR", "AE")
    assert accepted > 250  # the valid messages of other parsers' test suites route
    assert rejected > 20  # and the broken ones are refused


@pytest.mark.parametrize(("charset", "encoding"), [
    ("UNICODE UTF-8", "utf-8"), ("GB 18030-2000", "gb18030"), ("", "utf-8")])
def test_hex_escapes_are_read_in_the_message_character_set(charset: str, encoding: str) -> None:
    name = "张三"
    hex_name = name.encode(encoding).hex().upper()
    raw = (f"MSH|^~\\&|HIS|H|CDR|H|20260315091000||ADT^A04|X1|P|2.5|||||CHN|{charset}\r"
           f"PID|||M1||\\X{hex_name}\\||").encode(encoding)
    msg = parse(raw)
    assert msg.unescape(msg.get("PID", 5)) == "张三"
    assert msg.unescape("a\\X0D\\b") == "a\rb"
    # Bytes that are not text in that character set come back one per character.
    assert msg.unescape("\\XFF\\") == "ÿ"


def test_same_content_ignores_the_msh_and_line_endings_only() -> None:
    a = b"MSH|^~\\&|HIS|F|||20260101||ADT^A04|C1|P|2.5\rEVN|A04\rPID|1||M1\r"
    rebuilt = b"MSH|^~\\&|HIS|F|||20260102||ADT^A04|C1|P|2.5\r\nEVN|A04\r\nPID|1||M1"
    assert same_content(a, a) and same_content(a, rebuilt)
    assert not same_content(a, a.replace(b"M1", b"M2"))
    assert not same_content(a, a + b"NTE|1\r")
