"""The simulated platform's printable invoice (a one-page PDF) and QR image (a PNG).

Both are generated without a library: the PDF is a single page of Helvetica text with a
correct cross-reference table (viewers and ``pdfinfo`` accept it), the PNG is a black and
white pattern derived from the invoice number. It is not a decodable QR code: the
simulator only needs the shape of the real answer (Base64 image bytes).
"""

from __future__ import annotations

import hashlib
import struct
import zlib


def invoice_pdf(lines: list[str]) -> bytes:
    """A one-page PDF showing ``lines`` (ASCII; other characters become ``?``)."""
    text_ops = ["BT", "/F1 12 Tf", "16 TL", "36 260 Td"]
    for line in lines:
        safe = line.encode("ascii", "replace").decode("ascii")
        safe = safe.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        text_ops.append(f"({safe}) Tj T*")
    text_ops.append("ET")
    stream = "\n".join(text_ops).encode("ascii")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 420 300] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream
        + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref_at = len(out)
    out += f"xref\n0 {len(objects) + 1}\n".encode()
    out += b"0000000000 65535 f \n"
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref_at}\n%%EOF\n"
    ).encode()
    return bytes(out)


def pattern_png(seed: str, size: int = 21, scale: int = 4) -> bytes:
    """A ``size``×``size`` black/white PNG whose cells come from SHA-256 of ``seed``."""
    bits = int.from_bytes(hashlib.sha256(seed.encode("utf-8")).digest() * 2, "big")
    width = size * scale
    rows = bytearray()
    for y in range(size):
        row = bytearray([0])  # filter type 0 for each scanline
        for x in range(size):
            on = (bits >> ((y * size + x) % 512)) & 1
            row += bytes([0 if on else 255]) * scale
        rows += bytes(row) * scale
    header = struct.pack(">IIBBBBB", width, width, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(bytes(rows)))
        + _chunk(b"IEND", b"")
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )
