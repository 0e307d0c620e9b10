"""Image bytes -> validated, decoded pixels (Pillow, or TorchCodec for JPEGs). Raises InputError only.

TorchCodec (torchvision's successor for image decoding) decodes a JPEG straight into a tensor,
EXIF orientation applied, with the same pixels as Pillow plus `ImageOps.exif_transpose`
(tests/test_decoding_path.py checks this on real photos and every orientation). Pillow's path
costs a copy of the decoded image into the tensor that holds the GIL, which serialises the
decoding threads of a batch.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import bad_request, too_large, unsupported

try:
    from torchcodec.decoders import decode_jpeg
except ImportError:  # not installed (or no wheel for this platform): Pillow decodes everything
    decode_jpeg = None

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
            img = ImageOps.exif_transpose(img)
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
        img = Image.fromarray(_to_uint8(np.asarray(img)), mode="L")
    if keep_gray and img.mode in ("L", "1"):
        return img.convert("L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Float (0..1 or 0..255) or integer (16-bit) samples -> uint8, converted in blocks of rows
    so the working copy (float32 or int32) stays a few MB, not a second full-size image."""
    out = np.empty(arr.shape, np.uint8)
    if arr.dtype.kind == "f":
        finite_max = _finite_max(arr)
        scale = np.float32(255.0) if finite_max is not None and finite_max <= 1.0 and _finite_min(arr) >= 0.0 else None
    for start in range(0, arr.shape[0], _BLOCK_ROWS):
        block = arr[start:start + _BLOCK_ROWS]
        if arr.dtype.kind == "f":
            a = block.astype(np.float32)
            np.nan_to_num(a, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
            if scale is not None:
                a *= scale
            np.clip(a, 0, 255, out=a)
            out[start:start + _BLOCK_ROWS] = np.rint(a, out=a)
            continue
        # 16-bit samples (0..65535) -> 0..255 by the exact ratio 255/65535 = 1/257, rounded:
        # round(v / 257) == (v + 128) // 257 for integers (257 is odd, so there are no ties)
        a = block.astype(np.int64 if arr.dtype.itemsize > 4 or arr.dtype == np.uint32 else np.int32)
        np.clip(a, 0, 65535, out=a)
        a += 128
        a //= 257
        out[start:start + _BLOCK_ROWS] = a
    return out


_BLOCK_ROWS = 256


def _finite_max(arr: np.ndarray):
    """The largest finite sample (NaN and inf count as 0, as the conversion treats them)."""
    return max((float(np.where(np.isfinite(b), b, 0).max()) for b in _blocks(arr) if b.size), default=None)


def _finite_min(arr: np.ndarray):
    return min((float(np.where(np.isfinite(b), b, 0).min()) for b in _blocks(arr) if b.size), default=None)


def _blocks(arr: np.ndarray):
    return (arr[i:i + _BLOCK_ROWS] for i in range(0, arr.shape[0], _BLOCK_ROWS))


_IMAGE_MAGIC = (
    (b"\x89PNG", "PNG"), (b"\xff\xd8", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
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
                    f"The body is a {name} file, which this model does not accept. "
                    f"Send one of: {', '.join(FORMATS)}.",
                )
            return bad_request("not_an_image", f"The body looks like {name}, not an image.")
    if head.startswith((b"{", b"[")):
        return bad_request("not_an_image", "The body looks like JSON, not an image; see the README for the JSON fields.")
    try:
        text = data[:200].decode("utf-8")
        is_text = all(c.isprintable() or c.isspace() for c in text)
    except UnicodeDecodeError:
        is_text = False
    kind = f"text ({text[:40]!r})" if is_text else f"{len(data)} bytes of binary data starting {data[:8].hex()}"
    return bad_request(
        "not_an_image",
        f"The body is not an image: it looks like {kind}. "
        f"Send a {', '.join(FORMATS)} file.",
    )


JPEG_MODES = ("RGB", "L")  # colour and grayscale JPEGs; CMYK/YCCK stay on Pillow's conversion


def jpeg_tensor(img: Image.Image, data: bytes) -> torch.Tensor | None:
    """[3, H, W] uint8 RGB of the JPEG whose header Pillow opened as `img`, or None when Pillow
    should decode it: another format or mode, or data TorchCodec refuses (truncated, corrupt),
    so that Pillow's checks give the error the client sees."""
    if decode_jpeg is None or img.format not in ("JPEG", "MPO") or img.mode not in JPEG_MODES:
        return None
    try:
        return decode_jpeg(data, mode="RGB")
    except RuntimeError:
        return None
