"""Inputs for robustness tests, generated here: bad requests with the answer each must get,
and edge-case encodings of a real photo that must classify like its plain RGB JPEG."""

from __future__ import annotations

import base64
import gzip
import io
import json
import struct
import zipfile
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image


@dataclass
class Case:
    name: str
    body: bytes | str | dict  # dict: sent as JSON
    code: int
    type: str
    headers: dict = field(default_factory=dict)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height 1-bit pixels, with a tiny compressed body."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    idat = zlib.compress(row * min(height, 64), 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def gif_header_bomb() -> bytes:
    return (
        b"GIF89a"
        + struct.pack("<HH", 65535, 65535)
        + b"\x00\x00\x00"
        + b",\x00\x00\x00\x00\xff\xff\xff\xff\x00\x02\x02D\x01\x00;"
    )


def bad_cases(photo: bytes) -> list[Case]:
    """At least 30 malformed inputs; `photo` is a real JPEG to damage."""
    small = Image.open(io.BytesIO(photo)).convert("RGB").resize((64, 64))
    png, gif, tif, webp, bmp = (_save(small, f) for f in ("PNG", "GIF", "TIFF", "WEBP", "BMP"))
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("photo.jpg", photo)
    b64_photo = base64.b64encode(photo).decode()
    corrupt_scan = bytearray(photo)
    rng = np.random.default_rng(0)
    return [
        Case("empty", b"", 400, "empty_body"),
        Case("text", b"hello, I am not a picture", 400, "not_an_image"),
        Case("text_plain_str", "just some words", 400, "not_an_image", {"Content-Type": "text/plain"}),
        Case("html", b"<!DOCTYPE html><html><body>hi</body></html>", 400, "not_an_image"),
        Case("random_bytes", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), 400, "not_an_image"),
        Case("zeros", bytes(2048), 400, "not_an_image"),
        Case("pdf", b"%PDF-1.7\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", 415, "unsupported_format"),
        Case("svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', 415, "unsupported_format"),
        Case("svg_xml", b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', 415, "unsupported_format"),
        Case("zip", zipped.getvalue(), 415, "unsupported_format"),
        Case("gzip", gzip.compress(photo), 415, "unsupported_format"),
        Case("psd", b"8BPS\x00\x01" + bytes(64), 415, "unsupported_format"),
        Case("jpeg_truncated_half", photo[: len(photo) // 2], 400, "corrupt_image"),
        Case("jpeg_truncated_header", photo[:40], 400, "corrupt_image"),
        Case("jpeg_soi_only", b"\xff\xd8", 400, "corrupt_image"),
        Case("png_truncated", png[: len(png) // 2], 400, "corrupt_image"),
        Case("png_signature_garbage", b"\x89PNG\r\n\x1a\n" + bytes(100), 400, "corrupt_image"),
        Case("gif_truncated", gif[:20], 400, "corrupt_image"),
        Case("tiff_truncated", tif[:60], 400, "corrupt_image"),
        Case("webp_truncated", webp[:30], 400, "corrupt_image"),
        Case("bmp_truncated", bmp[:30], 400, "corrupt_image"),
        Case("png_bomb", png_bomb(20000, 20000), 413, "too_many_pixels"),
        Case("gif_header_bomb", gif_header_bomb(), 413, "too_many_pixels"),
        Case("json_no_image", {"picture": b64_photo}, 400, "missing_image_field"),
        Case("json_image_number", {"image": 12345}, 400, "bad_json"),
        Case("json_bad_base64", {"image": "!!!not base64!!!"}, 400, "bad_base64"),
        Case("json_list_of_two", [{"image": b64_photo}, {"image": b64_photo}], 400, "bad_json"),
        Case("json_base64_of_text", {"image": base64.b64encode(b"not an image at all").decode()}, 400, "not_an_image"),
        Case("data_uri_bad_base64", b"data:image/jpeg;base64,@@@###", 400, "bad_base64"),
        Case("json_topk_zero", {"image": b64_photo, "topk": 0}, 400, "bad_topk"),
        Case("json_topk_huge", {"image": b64_photo, "topk": 100000}, 400, "bad_topk"),
        Case("header_topk_text", photo, 400, "bad_topk", {"X-TopK": "many"}),
        Case(
            "json_invalid_syntax", b'{"image": "abc', 400, "not_an_image", {"Content-Type": "application/octet-stream"}
        ),
        Case("corrupt_then_valid_tail", bytes(corrupt_scan[:200]) + bytes(300), 400, "corrupt_image"),
    ]


def edge_case_encodings(photo: bytes) -> dict[str, bytes]:
    """The same picture in formats and modes real traffic carries; each must classify like `photo`."""
    rgb = Image.open(io.BytesIO(photo)).convert("RGB")
    arr = np.asarray(rgb)
    rgba = rgb.copy()
    rgba.putalpha(255)
    half_alpha = Image.fromarray(np.dstack([arr, np.full(arr.shape[:2], 255, np.uint8)]), "RGBA")
    half_alpha.putpixel((0, 0), (0, 0, 0, 0))  # one transparent pixel: still an alpha image
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated; viewers rotate it 90 degrees clockwise back
    rotated = rgb.transpose(Image.Transpose.ROTATE_90)
    rgb16 = arr.astype(np.uint16) * 257
    return {
        "baseline.jpg": _save(rgb, "JPEG", quality=95),
        "progressive.jpg": _save(rgb, "JPEG", quality=95, progressive=True),
        "cmyk.jpg": _save(rgb.convert("CMYK"), "JPEG", quality=95),
        "exif_rotated.jpg": _save(rotated, "JPEG", quality=95, exif=exif),
        "rgb8.png": _save(rgb, "PNG"),
        "rgba_opaque.png": _save(rgba, "PNG"),
        "rgba_alpha.png": _save(half_alpha, "PNG"),
        "palette.png": _save(rgb.quantize(256), "PNG"),
        "rgb16.png": _png16(rgb16),
        "webp": _save(rgb, "WEBP", quality=95),
        "webp_lossless": _save(rgb, "WEBP", lossless=True),
        "gif": _save(rgb, "GIF"),
        "bmp": _save(rgb, "BMP"),
        "tiff": _save(rgb, "TIFF"),
        "tiff_lzw": _save(rgb, "TIFF", compression="tiff_lzw"),
    }


def _png16(arr16: np.ndarray) -> bytes:
    """An RGB PNG with 16 bits per sample (Pillow cannot write one, so it is assembled here)."""
    h, w, _ = arr16.shape
    raw = b"".join(b"\x00" + arr16[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


def as_request(case_body) -> dict:
    """A body as TorchServe would hand it to the handler (JSON bodies arrive parsed)."""
    if isinstance(case_body, (dict, list)):
        return {"body": json.loads(json.dumps(case_body))}
    return {"body": case_body}
