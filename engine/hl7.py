"""A fast HL7 v2 tokenizer for the hot path, and acknowledgement building.

Routing, deduplication and acknowledgements need MSH and a handful of fields; a full hl7apy
parse costs about 5 ms per message, this costs microseconds. ``parse`` validates just what
an interface engine must refuse at the door (see ``RejectedInput``) and leaves the rest of
the message lazily split.

Field numbering follows the standard: ``MSH-1`` is the field separator itself and ``MSH-2``
the encoding characters, so for MSH the n-th field is element n-1 of the split segment.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from engine.errors import RejectedInput
from engine.message import new_id

# MSH-18 character set names (HL7 table 0211 plus what Chinese HIS vendors send) → codecs.
_CHARSETS = {
    "": "",
    "ASCII": "ascii",
    "UTF-8": "utf-8",
    "UTF8": "utf-8",
    "UNICODE UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "8859/1": "latin-1",
    "ISO-8859-1": "latin-1",
    "GB 18030-2000": "gb18030",
    "GB18030": "gb18030",
    "GB 18030": "gb18030",
    "GBK": "gb18030",
    "GB2312": "gb18030",
    "GB 2312": "gb18030",
    "CP936": "gb18030",
}
# Decoding with gb18030 accepts everything GB2312 and GBK accept, so one codec serves all three.

_SEGMENT_NAME = re.compile(r"[A-Z][A-Z0-9]{2}$")


def charset_codec(msh18: str) -> str | None:
    """The Python codec for an MSH-18 value ('' when unspecified, None when unknown)."""
    return _CHARSETS.get(msh18.strip().upper().split("^")[0].strip())


@dataclass(slots=True)
class Hl7Message:
    """A validated HL7 v2 message split into segments; fields are split on demand."""

    text: str
    encoding: str
    segments: list[str]
    field_sep: str
    component_sep: str
    repetition_sep: str
    escape_char: str
    subcomponent_sep: str
    _split: dict[int, list[str]] = field(default_factory=dict, repr=False)
    _index: dict[str, list[int]] | None = field(default=None, repr=False)

    # -- access ------------------------------------------------------------------------------

    def fields(self, index: int) -> list[str]:
        """Fields of segment ``index``, numbered so that ``fields(i)[n]`` is field n."""
        cached = self._split.get(index)
        if cached is None:
            seg = self.segments[index]
            parts = seg.split(self.field_sep)
            if parts[0] == "MSH":
                # MSH-1 is the separator itself; shift so MSH-n is parts[n].
                parts.insert(1, self.field_sep)
            cached = parts
            self._split[index] = cached
        return cached

    def segment_indexes(self, name: str) -> list[int]:
        """Positions of the segments called ``name``, in order (indexed once per message)."""
        index = self._index
        if index is None:
            index = {}
            for i, seg in enumerate(self.segments):
                index.setdefault(seg[:3], []).append(i)
            self._index = index
        return index.get(name, [])

    def get(
        self, segment: str, field_no: int, component: int = 1, *, repetition: int = 1,
        subcomponent: int | None = None, occurrence: int = 1,
    ) -> str:
        """A value by position (1-based everywhere), raw (escape sequences kept); '' if absent."""
        found = [0] if segment == "MSH" and occurrence == 1 else self.segment_indexes(segment)
        if len(found) >= occurrence:
            parts = self.fields(found[occurrence - 1])
            if field_no >= len(parts):
                return ""
            value = parts[field_no]
            if segment == "MSH" and field_no in (1, 2):
                return value
            reps = value.split(self.repetition_sep)
            if repetition > len(reps):
                return ""
            comps = reps[repetition - 1].split(self.component_sep)
            if component > len(comps):
                return ""
            value = comps[component - 1]
            if subcomponent is not None:
                subs = value.split(self.subcomponent_sep)
                value = subs[subcomponent - 1] if subcomponent <= len(subs) else ""
            return value
        return ""

    def field_text(self, segment: str, field_no: int) -> str:
        """The whole field (all repetitions and components), raw."""
        for idx in self.segment_indexes(segment):
            parts = self.fields(idx)
            return parts[field_no] if field_no < len(parts) else ""
        return ""

    # -- MSH shortcuts -----------------------------------------------------------------------

    @property
    def message_type(self) -> str:
        """``ADT^A01`` style: MSH-9.1 and MSH-9.2 (the structure MSH-9.3 is left out)."""
        code = self.get("MSH", 9, 1)
        trigger = self.get("MSH", 9, 2)
        return f"{code}{self.component_sep}{trigger}" if trigger else code

    @property
    def control_id(self) -> str:
        return self.get("MSH", 10)

    @property
    def sending_application(self) -> str:
        return self.get("MSH", 3)

    @property
    def sending_facility(self) -> str:
        return self.get("MSH", 4)

    @property
    def version(self) -> str:
        return self.get("MSH", 12)

    def unescape(self, value: str) -> str:
        return unescape(value, self)

    def escape(self, value: str) -> str:
        return escape(value, self)


def split_segments(text: str) -> list[str]:
    """Segments on CR, tolerating LF and CRLF (common in files and some HIS exports)."""
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    return [s for s in text.split("\r") if s.strip()]


def same_content(earlier: bytes, later: bytes) -> bool:
    """Whether ``later`` is a resend of ``earlier``: the same segments after MSH.

    A sender that resends after a lost ACK may rebuild the MSH (a new MSH-7 time) or write
    other line endings; what the message says is in the segments that follow.
    """
    return _after_msh(earlier) == _after_msh(later)


def _after_msh(raw: bytes) -> bytes:
    if b"\n" in raw:
        raw = raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    _, _, rest = raw.partition(b"\r")
    return rest.strip(b"\r")


def decode(raw: bytes, default_encoding: str = "utf-8") -> tuple[str, str]:
    """Decode message bytes using MSH-18, returning (text, codec).

    Delimiters are ASCII, but GBK trail bytes can equal ``|`` or ``^``, so the message is
    decoded before it is split. MSH-18 is read from a byte-preserving view of the first
    segment, which is safe because MSH-18 itself is ASCII.
    """
    head = raw[:1024].split(b"\r", 1)[0].split(b"\n", 1)[0].decode("latin-1")
    declared = ""
    if head.startswith("MSH") and len(head) > 3:
        parts = head.split(head[3])
        if len(parts) > 17:
            declared = parts[17]
    codec = charset_codec(declared)
    if codec is None:
        raise RejectedInput(
            f"unsupported character set in MSH-18: {declared[:40]!r}", code="AR", hl7_error="203"
        )
    codec = codec or default_encoding
    try:
        return raw.decode(codec), codec
    except UnicodeDecodeError as exc:
        where = f"MSH-18 {declared!r}" if declared else f"default {codec}"
        raise RejectedInput(
            f"message is not valid {codec} ({where}): undecodable byte at offset {exc.start}",
            code="AR",
            hl7_error="102",
        ) from None


def parse(raw: bytes, *, default_encoding: str = "utf-8") -> Hl7Message:
    """Decode and validate a message just enough to route, deduplicate and acknowledge it.

    Raises:
        RejectedInput: with a reason specific to what is wrong.
    """
    stripped = raw.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not stripped:
        raise RejectedInput("empty message", hl7_error="100")
    if stripped[:3] in (b"FHS", b"BHS"):
        raise RejectedInput(
            "a batch (FHS/BHS) is not a single message: send one message per frame",
            hl7_error="200",
        )
    if stripped[:3] != b"MSH":
        raise RejectedInput(
            "not an HL7 v2 message: it must start with an MSH segment", hl7_error="100"
        )
    text, codec = decode(stripped, default_encoding)
    if len(text) < 8:
        raise RejectedInput("MSH segment is too short", hl7_error="100")
    field_sep = text[3]
    if field_sep.isalnum() or field_sep.isspace():
        raise RejectedInput(
            f"invalid field separator {field_sep!r} in MSH-1", hl7_error="102"
        )
    end = text.find(field_sep, 4)
    encoding_chars = text[4:end] if end != -1 else ""
    if not _valid_encoding_chars(encoding_chars, field_sep):
        raise RejectedInput(
            f"invalid encoding characters in MSH-2: {encoding_chars[:10]!r}"
            " (expected four distinct delimiters such as ^~\\&)",
            hl7_error="102",
        )
    padded = encoding_chars + "\x00" * (4 - min(4, len(encoding_chars)))
    segments = split_segments(text)
    msg = Hl7Message(
        text=text,
        encoding=codec,
        segments=segments,
        field_sep=field_sep,
        component_sep=padded[0],
        repetition_sep=padded[1],
        escape_char=padded[2],
        subcomponent_sep=padded[3],
    )
    for n, seg in enumerate(segments, start=1):
        name = seg.split(field_sep, 1)[0]
        if not _SEGMENT_NAME.match(name):
            raise RejectedInput(
                f"segment {n} has an invalid name {name[:10]!r}", hl7_error="100", partial=msg
            )
        if name == "MSH" and n > 1:
            # A second message: taken as part of this one, it would never be acknowledged.
            raise RejectedInput(
                f"segment {n} begins another message: several messages are a batch",
                hl7_error="100", partial=msg,
            )
    if not msg.get("MSH", 9):
        raise RejectedInput(
            "required field MSH-9 (message type) is missing", hl7_error="101", partial=msg
        )
    if not msg.control_id:
        raise RejectedInput(
            "required field MSH-10 (message control id) is missing", hl7_error="101",
            partial=msg,
        )
    return msg


def _valid_encoding_chars(chars: str, field_sep: str) -> bool:
    if not 2 <= len(chars) <= 5:
        return False
    if len(set(chars)) != len(chars) or field_sep in chars:
        return False
    return not any(c.isalnum() or c.isspace() for c in chars)


# -- escaping ---------------------------------------------------------------------------------

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_CONTROL = re.compile(r"[\x00-\x09\x0b\x0c\x0e-\x1f\x7f]")


def escape(value: str, seps: Hl7Message | None = None) -> str:
    """Escape a value for an HL7 field: delimiters become escape sequences, line breaks ``\\.br\\``
    and other control characters ``\\Xhh\\``.

    After escaping, no value can open a new field, component or segment.
    """
    f, c, r, e, s = (
        (seps.field_sep, seps.component_sep, seps.repetition_sep, seps.escape_char,
         seps.subcomponent_sep)
        if seps else ("|", "^", "~", "\\", "&")
    )
    out = value.replace(e, f"{e}E{e}")
    out = out.replace(f, f"{e}F{e}").replace(c, f"{e}S{e}").replace(r, f"{e}R{e}")
    if s != "\x00":
        out = out.replace(s, f"{e}T{e}")
    br = f"{e}.br{e}"
    out = _LINE_BREAK.sub(lambda _: br, out)
    if e >= " " and _CONTROL.search(out):
        # Raw control characters could end an MLLP frame early (0x1C then CR) or confuse
        # a peer's parser; \Xhh\ carries them as data.
        out = _CONTROL.sub(lambda m: f"{e}X{ord(m.group(0)):02X}{e}", out)
    return out


_ESCAPE_SEQ = re.compile(r"\\(F|S|T|R|E|\.br|X[0-9A-Fa-f]*|H|N)\\")


def unescape(value: str, seps: Hl7Message | None = None) -> str:
    """Undo HL7 escape sequences.

    Handles \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\.br\\ and \\Xhh\\; highlighting
    (\\H\\, \\N\\) is dropped. The bytes of \\Xhh...\\ are read in the message's own
    character set (MSH-18), so a sender escaping a multi-byte character gets it back; bytes
    that are not valid there are read one character per byte (latin-1).
    """
    e = seps.escape_char if seps else "\\"
    if e not in value:
        return value
    f, c, r, s = (
        (seps.field_sep, seps.component_sep, seps.repetition_sep, seps.subcomponent_sep)
        if seps else ("|", "^", "~", "&")
    )
    table = {"F": f, "S": c, "T": s, "R": r, "E": e, ".br": "\r", "H": "", "N": ""}
    charset = seps.encoding if seps is not None else "latin-1"

    def sub(m: re.Match[str]) -> str:
        code = m.group(1)
        if code.startswith("X"):
            try:
                data = bytes.fromhex(code[1:])
            except ValueError:
                return m.group(0)
            try:
                return data.decode(charset)
            except (UnicodeDecodeError, LookupError):
                return data.decode("latin-1")
        return table[code]

    pattern = _ESCAPE_SEQ if e == "\\" else re.compile(
        re.escape(e) + r"(F|S|T|R|E|\.br|X[0-9A-Fa-f]*|H|N)" + re.escape(e)
    )
    return pattern.sub(sub, value)


# -- acknowledgements -------------------------------------------------------------------------


_last_stamp: tuple[int, str] = (0, "")


def timestamp(at: float | None = None) -> str:
    """``YYYYMMDDHHMMSS`` local time; the current second is formatted once, not per ACK."""
    global _last_stamp
    second = int(at if at is not None else time.time())
    if second != _last_stamp[0]:
        _last_stamp = (second, time.strftime("%Y%m%d%H%M%S", time.localtime(second)))
    return _last_stamp[1]


def build_ack(
    msg: Hl7Message | None,
    code: str,
    *,
    text: str = "",
    error_code: str | None = None,
    application: str = "HISBRIDGE",
    facility: str = "",
) -> str:
    """An original-mode ACK (MSH, MSA and, for AE/AR, ERR) answering ``msg``.

    ``msg`` may be None when the input could not be parsed at all; MSA-2 is then empty.
    The reason text is escaped, so it cannot break the ACK's own structure.
    """
    if msg is None:
        fs, enc = "|", "^~\\&"
        to_app = to_fac = version = pid = charset = trigger = control = ""
        version = "2.5"
        pid = "P"
    else:
        fs = msg.field_sep
        enc = (msg.component_sep + msg.repetition_sep + msg.escape_char + msg.subcomponent_sep)
        enc = enc.rstrip("\x00")
        to_app, to_fac = msg.get("MSH", 3), msg.get("MSH", 4)
        application = msg.get("MSH", 5) or application
        facility = msg.get("MSH", 6) or facility
        version = msg.field_text("MSH", 12) or "2.5"
        pid = msg.field_text("MSH", 11) or "P"
        charset = msg.field_text("MSH", 18)
        trigger = msg.get("MSH", 9, 2)
        control = msg.control_id
    cs = enc[0] if enc else "^"
    ack_type = f"ACK{cs}{trigger}{cs}ACK" if trigger else "ACK"
    msh = fs.join([
        "MSH", enc, application, facility, to_app, to_fac, timestamp(), "", ack_type,
        new_id(), pid, version, "", "", "", "", "", charset,
    ]).rstrip(fs)
    safe_text = escape(text, msg)[:200] if text else ""
    msa = fs.join(["MSA", code, control, safe_text]).rstrip(fs)
    segments = [msh, msa]
    if code != "AA" and error_code:
        label = _ERROR_LABELS.get(error_code, "Application error")
        err = fs.join(
            ["ERR", "", "", f"{error_code}{cs}{label}{cs}HL70357", "E", "", "", "", safe_text]
        )
        segments.append(err)
    return "\r".join(segments) + "\r"


_ERROR_LABELS = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "203": "Unsupported version id",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}
