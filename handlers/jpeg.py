"""JPEG bytes -> uint8 tensor with TorchCodec's libjpeg-turbo decoder, where it matches Pillow.

TorchCodec (torchvision's successor for image decoding) decodes into a tensor directly, applying
EXIF orientation, with the same pixels as Pillow plus `ImageOps.exif_transpose`
(tests/test_jpeg_path.py checks this on real photos and every orientation). Pillow's path costs a
copy of the decoded image into the tensor that holds the GIL, so a batch decodes about 1.5x
faster this way on the decoding threads (docs/PERFORMANCE.md, "TorchCodec JPEG decoding").
"""

from __future__ import annotations

import torch
from PIL import Image

try:
    from torchcodec.decoders import decode_jpeg
except ImportError:  # not installed (or no wheel for this platform): Pillow decodes everything
    decode_jpeg = None

MODES = ("RGB", "L")  # colour and grayscale JPEGs; CMYK/YCCK stay on Pillow's conversion


def jpeg_tensor(img: Image.Image, data: bytes) -> torch.Tensor | None:
    """[3, H, W] uint8 RGB of the JPEG whose header Pillow opened as `img`, or None when Pillow
    should decode it: another format or mode, or data TorchCodec refuses (truncated, corrupt),
    so that Pillow's checks give the error the client sees."""
    if decode_jpeg is None or img.format not in ("JPEG", "MPO") or img.mode not in MODES:
        return None
    try:
        return decode_jpeg(data, mode="RGB")
    except RuntimeError:
        return None
