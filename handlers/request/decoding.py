"""Image bytes -> validated, decoded pixels (Pillow, or TorchCodec for JPEG, PNG and WebP). Raises InputError only.

TorchCodec (torchvision's successor for image decoding) decodes JPEG, PNG and WebP straight
into a tensor with the same pixels as Pillow (EXIF orientation applied to JPEGs as
`ImageOps.exif_transpose` does; tests/test_decoding_path.py checks this on real photos and every
orientation). Pillow's path costs a copy of the decoded image into the tensor that holds the
GIL, which serialises the decoding threads of a batch, and a WebP decoded by Pillow holds three
full-size buffers at once.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import bad_request, too_large, unsupported

try:
    from torchcodec.decoders import decode_jpeg, decode_png, decode_webp
except ImportError:  # not installed (or no wheel for this platform): Pillow decodes everything
    decode_jpeg = decode_png = decode_webp = None

# Formats decoded; Pillow is never asked to try any other plugin (EPS, PSD, ...).
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # JPEG covers MPO (phone photos)
BACKGROUND = (255, 255, 255)  # transparent pixels are composited over white
_SIGNATURES = (  # what a refused body looks like, for the error message
    (b"%PDF", "PDF", True),
    (b"<svg", "SVG", True),
    (b"<?xml", "XML/SVG", True),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000", True),
    (b"8BPS", "Photoshop (PSD)", True),
    (b"PK\x03\x04", "ZIP archive", True),
    (b"\x1f\x8b", "gzip archive", True),
    (b"<!doctype html", "HTML", False),
    (b"<html", "HTML", False),
)


def decode_image(data: bytes, max_pixels: int, draft_size: int | None = None) -> Image.Image:
    """Encoded image -> RGB PIL image, EXIF orientation applied.

    The pixel count is checked from the header before any pixel is decoded. With
    `draft_size`, JPEGs are decoded by DCT scaling straight to the smallest size whose
    sides are both >= draft_size (several times faster on large photos).
    """
    img = open_image(data, max_pixels)
    if draft_size:
        draft_jpeg(img, draft_size)
    return load_rgb(img, max_pixels)


def decode_pixels(
    img: Image.Image, data: bytes, max_pixels: int, tensor: bool = False, keep_gray: bool = False
) -> torch.Tensor | Image.Image:
    """An opened image's pixels, upright: with `tensor`, a uint8 [C, H, W] tensor (C = 3, or 1 for
    grayscale) decoded by TorchCodec where it takes the image (direct_tensor); otherwise, or where
    it does not, Pillow's RGB image (L for grayscale when `keep_gray`)."""
    pixels = direct_tensor(img, data) if tensor else None
    return pixels if pixels is not None else load_rgb(img, max_pixels, keep_gray)


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Encoded image -> a PIL image whose header is read and checked; no pixel decoded yet."""
    if not data:
        raise bad_request("empty_body", "The request body is empty. Send the image bytes as the body.")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=FORMATS)
        except UnidentifiedImageError:
            raise _not_an_image(data) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise too_large("too_many_pixels", f"The image has more than {max_pixels} pixels.") from None
        except Exception as exc:  # a header Pillow recognised but cannot parse
            raise bad_request("corrupt_image", f"The image header is corrupt: {exc}.") from None
    width, height = img.size
    if width * height > max_pixels:
        raise too_large(
            "too_many_pixels",
            f"The image is {width}x{height} = {width * height} pixels; "
            f"this model accepts at most {max_pixels}. Downscale it before sending.",
        )
    if width < 1 or height < 1:
        raise bad_request("corrupt_image", f"The image has no pixels ({width}x{height}).")
    return img


def draft_jpeg(img: Image.Image, draft_size: int) -> None:
    """Ask Pillow to decode a JPEG by DCT scaling to the smallest size with both sides >=
    draft_size; `img.size` shows the result before decoding (unchanged when no scale fits)."""
    if img.format in ("JPEG", "MPO"):
        img.draft("RGB", (draft_size, draft_size) if isinstance(draft_size, int) else tuple(draft_size))


def load_rgb(img: Image.Image, max_pixels: int, keep_gray: bool = False) -> Image.Image:
    """Decode an opened image's pixels -> RGB (or L for a grayscale image when `keep_gray`:
    a third of the memory, for callers that resize it as one channel), EXIF orientation applied."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img.load()
            ImageOps.exif_transpose(img, in_place=True)  # in place: a copy would be made even of an upright image
            return to_rgb(img, keep_gray)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise too_large("too_many_pixels", f"The image has more than {max_pixels} pixels.") from None
        except Exception as exc:  # truncated data, bad chunks, broken EXIF, ...
            raise bad_request(
                "corrupt_image",
                f"The {img.format or 'image'} data is truncated or corrupt and cannot be decoded: {exc}.",
            ) from None


def to_rgb(img: Image.Image, keep_gray: bool = False) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB (8-bit L for grayscale when `keep_gray`): 16-bit scaled (not
    clipped), alpha composited over white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        img = Image.fromarray(_to_uint8(img), mode="L")
    if keep_gray and img.mode in ("L", "1"):
        return img.convert("L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        # pasting through its own alpha gives exactly alpha_composite over opaque white (every
        # value and alpha, tests/test_pixels.py), with two full-size images instead of four
        background = Image.new("RGB", rgba.size, BACKGROUND)
        background.paste(rgba, mask=rgba)
        return background
    return img.convert("RGB")


def _to_uint8(img: Image.Image) -> np.ndarray:
    """A 16-bit, 32-bit or float image (modes I;16, I, F) -> uint8 samples: float 0..1 or 0..255,
    integers as 16-bit. Converted a block of rows at a time, so the working copies (the block's
    samples, then float32 or int32) stay a few MB, never a second full-size image."""
    w, h = img.size
    out = np.empty((h, w), np.uint8)
    scale = None
    if img.mode == "F":  # a first pass for the range: 0..1 samples are scaled to 0..255
        lows, highs = zip(*(_finite_range(block) for _, block in _blocks(img)))
        scale = np.float32(255.0) if max(highs) <= 1.0 and min(lows) >= 0.0 else None
    for start, block in _blocks(img):
        out[start : start + len(block)] = _block_to_uint8(block, scale)
    return out


def _block_to_uint8(block: np.ndarray, scale) -> np.ndarray:
    if block.dtype.kind == "f":
        a = block.astype(np.float32)
        np.nan_to_num(a, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        if scale is not None:
            a *= scale
        np.clip(a, 0, 255, out=a)
        return np.rint(a, out=a)
    # 16-bit samples (0..65535) -> 0..255 by the exact ratio 255/65535 = 1/257, rounded:
    # round(v / 257) == (v + 128) // 257 for integers (257 is odd, so there are no ties)
    a = block.astype(np.int64 if block.dtype.itemsize > 4 or block.dtype == np.uint32 else np.int32)
    np.clip(a, 0, 65535, out=a)
    a += 128
    a //= 257
    return a


BAND_BYTES = 4 << 20  # full-size work is done a band of rows of about this many bytes at a time


def _blocks(img: Image.Image):
    """(first row, samples) for each band of rows of the image, each cropped and read on its own."""
    w, h = img.size
    rows = max(1, BAND_BYTES // (w * 4))
    for start in range(0, h, rows):
        yield start, np.asarray(img.crop((0, start, w, min(h, start + rows))))


def _finite_range(block: np.ndarray) -> tuple[float, float]:
    """The smallest and largest finite sample (NaN and inf count as 0, as the conversion treats them)."""
    if not block.size:
        return 0.0, 0.0
    finite = np.where(np.isfinite(block), block, 0)
    return float(finite.min()), float(finite.max())


_IMAGE_MAGIC = (
    (b"\x89PNG", "PNG"),
    (b"\xff\xd8", "JPEG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def _image_kind(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in _IMAGE_MAGIC if data.startswith(magic)), None)


def _not_an_image(data: bytes):
    kind = _image_kind(data)
    if kind:
        return bad_request("corrupt_image", f"The body starts like a {kind} file but its header is corrupt.")
    head = data[:512].lstrip().lower()
    for signature, name, is_format in _SIGNATURES:
        if head.startswith(signature.lower()) or (name.startswith("XML") and b"<svg" in head):
            if is_format:
                return unsupported(
                    "unsupported_format",
                    f"The body is a {name} file, which this model does not accept. Send one of: {', '.join(FORMATS)}.",
                )
            return bad_request("not_an_image", f"The body looks like {name}, not an image.")
    if head.startswith((b"{", b"[")):
        return bad_request(
            "not_an_image", "The body looks like JSON, not an image; see the README for the JSON fields."
        )
    try:
        text = data[:200].decode("utf-8")
        is_text = all(c.isprintable() or c.isspace() for c in text)
    except UnicodeDecodeError:
        is_text = False
    kind = f"text ({text[:40]!r})" if is_text else f"{len(data)} bytes of binary data starting {data[:8].hex()}"
    return bad_request(
        "not_an_image",
        f"The body is not an image: it looks like {kind}. Send a {', '.join(FORMATS)} file.",
    )


JPEG_MODES = ("RGB", "L")  # colour and grayscale JPEGs; CMYK/YCCK stay on Pillow's conversion
# TorchCodec's decoder per format, and the Pillow modes it decodes alike: for PNG and WebP also
# alpha, composited over white here. They take it only when Pillow would neither pick a frame nor
# apply an EXIF orientation: one frame, and no EXIF block anywhere in the bytes (a PNG may carry
# it after the pixels, where no header shows it). Palettes, tRNS and other bit depths stay with Pillow.
_DIRECT_MODES = {"RGB": "RGB", "L": "GRAY", "RGBA": "RGB_ALPHA", "LA": "GRAY_ALPHA"}
_EXIF_MARK = {"PNG": b"eXIf", "WEBP": b"EXIF"}


def direct_tensor(img: Image.Image, data: bytes) -> torch.Tensor | None:
    """[C, H, W] uint8 (C = 3, or 1 for a grayscale image; alpha composited over white) of the
    image whose header Pillow opened as `img`, decoded by TorchCodec; None when Pillow should
    decode it: another format or mode, or data TorchCodec refuses (truncated, corrupt), so that
    Pillow's checks give the error the client sees."""
    decode = {"JPEG": decode_jpeg, "MPO": decode_jpeg, "PNG": decode_png, "WEBP": decode_webp}.get(img.format)
    mark = _EXIF_MARK.get(img.format)
    if decode is None or img.mode not in (_DIRECT_MODES if mark else JPEG_MODES):
        return None
    if mark and ("transparency" in img.info or getattr(img, "n_frames", 1) != 1 or mark in data):
        return None
    if img.format == "PNG" and data[24:25] != b"\x08":  # IHDR's bit depth; of 16-bit samples Pillow
        return None  # keeps the high byte, TorchCodec rounds
    try:
        pixels = decode(data, mode=_DIRECT_MODES[img.mode])
    except (RuntimeError, ValueError):
        return None
    return over_white(pixels) if img.mode in ("RGBA", "LA") else pixels


def over_white(pixels: torch.Tensor) -> torch.Tensor:
    """[C+1, H, W] uint8 with alpha last -> [C, H, W] composited over white, a band of rows at a
    time, with Pillow's arithmetic (to_rgb's paste): (v * a + 255 * (255 - a)) / 255, rounded."""
    channels, h, w = pixels.shape[0] - 1, pixels.shape[1], pixels.shape[2]
    out = torch.empty((h, w, channels), dtype=torch.uint8).permute(2, 0, 1)
    rows = max(1, BAND_BYTES // (w * 16))
    for top in range(0, h, rows):
        band = pixels[:, top : top + rows].to(torch.int32)
        alpha = band[channels:]
        mixed = band[:channels] * alpha + 255 * (255 - alpha) + 128
        out[:, top : top + rows] = (mixed + (mixed >> 8)) >> 8
    return out
