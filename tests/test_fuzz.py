"""Fuzz the served request path (payload, top-k, decoding with TorchCodec or Pillow, the recipe's
pixels): only the typed InputError may escape. A quick profile by default; CI runs 10,000 inputs
(FUZZ_EXAMPLES sets the count)."""

from __future__ import annotations

import io
import os

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from handlers.request.errors import InputError
from handlers.request.pixels import image_pixels
from handlers.request.payload import extract_payload, parse_topk
from handlers.model.recipe import Recipe

RECIPE = Recipe(crop_size=32, resize_size=36)  # small, so 10,000 runs stay quick
MAX_PIXELS = 4_000_000
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or (10_000 if os.environ.get("CI") else 1_000))


def _seeds() -> list[bytes]:
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8), "RGB")
    out = []
    for fmt, kw in [("JPEG", {}), ("JPEG", {"progressive": True}), ("PNG", {}), ("GIF", {}), ("WEBP", {}),
                    ("BMP", {}), ("TIFF", {}), ("PNG", {"bits": 4})]:
        buf = io.BytesIO()
        (img.convert("P") if "bits" in kw else img).save(buf, format=fmt, **({} if "bits" in kw else kw))
        out.append(buf.getvalue())
    la = Image.new("LA", (9, 5), (100, 50))
    buf = io.BytesIO()
    la.save(buf, format="PNG")
    out.append(buf.getvalue())
    return out


SEEDS = _seeds()


@st.composite
def mutated_image(draw):
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "header"]))
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[pos] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(max_size=16))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 64))]
        else:  # corrupt the header, where sizes live
            data[min(pos, 32)] = draw(st.integers(0, 255))
    return bytes(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["image", "data", "b64", "topk", "x"]), children, max_size=3),
    max_leaves=6,
)

requests_ = st.one_of(
    mutated_image().map(lambda b: {"body": b}),
    st.binary(max_size=512).map(lambda b: {"data": b}),
    st.text(max_size=200).map(lambda t: {"body": t}),
    json_values.map(lambda v: {"body": v}),
    st.dictionaries(st.text(max_size=8), st.binary(max_size=64), max_size=2),
)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(item=requests_, topk=st.one_of(st.none(), st.integers(-5, 200), st.text(max_size=4)))
def test_the_served_decoding_path_raises_only_input_error(item, topk):
    try:
        payload = extract_payload(item, max_bytes=1 << 20)
        parse_topk(topk, 5, 100)
        pixels = image_pixels(payload.image, MAX_PIXELS, RECIPE)
    except InputError as err:
        assert 400 <= err.code < 500 and err.type and err.message
        assert err.reason().isascii()
        return
    assert pixels.shape == (3, 32, 32) and pixels.dtype == torch.uint8
