"""Hostile inputs, generated here: decompression bombs in metadata, thousands of frames, pages
and LZW, deep and float pixels at the pixel limit, extreme shapes, odd EXIF, and bodies at and
one past each limit. Each comes with the answer it must get; 200 means "classified"."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from tests.corpus import Case, _png_chunk, _save

LIMIT_PIXELS = 50_000_000  # max_image_pixels, model-config.yaml
LIMIT_BYTES = 24 * 1024 * 1024  # max_body_bytes


def _png(width: int, height: int, extra_chunks: bytes = b"", bit_depth: int = 1, color: int = 0) -> bytes:
    """A valid PNG of zero rows (compressed to almost nothing), with chunks before IDAT."""
    channels = {0: 1, 2: 3}[color]
    row = b"\x00" + bytes(-(-width * channels * bit_depth // 8))
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + extra_chunks
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _zeros_deflated(n: int) -> bytes:
    compressor = zlib.compressobj(9)
    chunk = bytes(1 << 20)
    return b"".join(compressor.compress(chunk) for _ in range(n >> 20)) + compressor.flush()


def _animated(frames: int, fmt: str) -> bytes:
    rng = np.random.default_rng(1)
    if fmt == "GIF":  # palette frames: nothing for Pillow to quantise
        palette = rng.integers(0, 256, 768, dtype=np.uint8).tobytes()
        images = [Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), "P") for _ in range(frames)]
        for img in images:
            img.putpalette(palette)
    else:
        images = [Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(frames)]
    return _save(images[0], fmt, save_all=True, append_images=images[1:], duration=10, loop=0)


def _exif_orientation(photo_rgb: Image.Image, value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return _save(photo_rgb, "JPEG", quality=90, exif=exif)


def _tiff_at_limit(mode: str) -> bytes:
    """A deflate TIFF of mode I;16 or F with exactly the pixel limit (10000 x 5000): a vertical
    gradient, each row one value, so the file stays small."""
    width, height = 10_000, LIMIT_PIXELS // 10_000
    ramp = np.linspace(0, 1, height, dtype=np.float32)[:, None].repeat(width, 1)
    if mode == "I;16":
        img = Image.fromarray((ramp * 65535).astype(np.uint16))
    else:
        img = Image.fromarray(ramp, mode="F")
    return _save(img, "TIFF", compression="tiff_adobe_deflate")


def _multipage_tiff(photo_rgb: Image.Image) -> bytes:
    pages = [photo_rgb, photo_rgb.rotate(90), photo_rgb.convert("L")]
    buf = io.BytesIO()
    pages[0].save(buf, "TIFF", save_all=True, append_images=pages[1:], compression="tiff_lzw")
    return buf.getvalue()


def _padded(photo: bytes, size: int) -> bytes:
    """The photo, then zeros after its end marker, to exactly `size` bytes (decoders stop at EOI)."""
    return photo + bytes(size - len(photo))


def hostile_cases(photo: bytes, label: str) -> list[Case]:
    """`photo` is a real JPEG whose top-1 is `label`; cases that must classify carry code 200
    and type `label` (or "" where the picture is not that photo)."""
    rgb = Image.open(io.BytesIO(photo)).convert("RGB")
    text_bomb = _png_chunk(b"zTXt", b"Comment\x00\x00" + _zeros_deflated(64 << 20))
    icc_bomb = _png_chunk(b"iCCP", b"icc\x00\x00" + _zeros_deflated(64 << 20))
    itxt_bomb = _png_chunk(b"iTXt", b"Comment\x00\x01\x00\x00\x00" + _zeros_deflated(64 << 20))
    return [
        # Pillow refuses metadata that inflates past its limits, as a corrupt image
        Case("png_ztxt_bomb", _png(64, 64, text_bomb), 400, "corrupt_image"),
        Case("png_itxt_bomb", _png(64, 64, itxt_bomb), 400, "corrupt_image"),
        Case("png_iccp_bomb", _png(64, 64, icc_bomb), 400, "corrupt_image"),
        Case("gif_2000_frames", _animated(2000, "GIF"), 200, ""),
        Case("apng_2000_frames", _animated(2000, "PNG"), 200, ""),
        Case("webp_2000_frames", _animated(2000, "WEBP"), 200, ""),
        Case("tiff_multipage_lzw", _multipage_tiff(rgb), 200, label),
        Case("tiff_16bit_at_limit", _tiff_at_limit("I;16"), 200, ""),
        Case("tiff_float_at_limit", _tiff_at_limit("F"), 200, ""),
        Case("png_1x60000", _png(1, 60_000, bit_depth=8), 200, ""),
        Case("png_60000x1", _png(60_000, 1, bit_depth=8), 200, ""),
        Case("exif_orientation_0", _exif_orientation(rgb, 0), 200, label),
        Case("exif_orientation_9", _exif_orientation(rgb, 9), 200, label),
        Case("exif_orientation_65535", _exif_orientation(rgb, 65535), 200, label),
        Case("pixels_at_limit", _png(LIMIT_PIXELS, 1), 200, ""),
        Case("pixels_one_over_limit", _png(LIMIT_PIXELS + 1, 1), 413, "too_many_pixels"),
        Case("body_at_limit", _padded(photo, LIMIT_BYTES), 200, label),
        Case("body_one_byte_over_limit", _padded(photo, LIMIT_BYTES + 1), 413, "body_too_large"),
    ]


# The frontend's own limits (README, "Errors"): answered by TorchServe before the handler.
MAX_REQUEST_SIZE = 34_603_008  # config.properties
