"""Photos the model never saw, cut from photos it did: random crops of any aspect ratio (1:3 to
3:1, 30-100% of a photo), mirrored at random, optionally rescaled from half to twice their size.
A verification or drift-profile set where a user gives none (make bench), and the tests'."""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from pathlib import Path

from PIL import Image

ASPECTS = (1 / 3, 0.5, 0.75, 1.0, 4 / 3, 2.0, 3.0)


def random_crops(photos: list[Image.Image], count: int, seed: int, rescale: bool = False,
                 transform: Callable | None = None) -> list[Image.Image]:  # fmt: skip
    """`count` RGB crops of `photos` (round robin), the same for the same seed."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        w, h = photo.size
        aspect, share = rng.choice(ASPECTS), rng.uniform(0.3, 1.0)
        cw = max(1, min(w, int((w * h * share * aspect) ** 0.5)))
        ch = max(1, min(h, int(cw / aspect)))
        left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = photo.crop((left, top, left + cw, top + ch))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        if rescale:
            scale = rng.choice([0.5, 1.0, 2.0])
            crop = crop.resize((max(16, int(cw * scale)), max(16, int(ch * scale))), Image.BICUBIC)
        out.append(transform(crop) if transform else crop)
    return out


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def open_photos(files: list[Path], longest: int | None = None) -> list[Image.Image]:
    """RGB photos, shrunk to `longest` pixels on their long side where given (fast crops)."""
    out = []
    for path in files:
        img = Image.open(path).convert("RGB")
        if longest:
            img.thumbnail((longest, longest))
        out.append(img)
    return out
