"""Fuzz the served request path as the handler runs it (read_request: every protocol, top-k;
the handler's decode: TorchCodec or Pillow, the recipe's pixels): every input is answered with
pixels or a 4xx, never a 500 (a bug of ours) and never an exception. A quick profile by default;
CI runs 10,000 inputs (FUZZ_EXAMPLES sets the count)."""

from __future__ import annotations

import base64
import io
import json
import os

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from handlers.request.errors import RequestError
from handlers.request.protocols import read_request
from handlers.request.request import Limits

LIMITS = Limits(max_bytes=1 << 20, max_images=4, max_pixels=4_000_000)
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or (10_000 if os.environ.get("CI") else 1_000))


def _seeds() -> list[bytes]:
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8), "RGB")
    out = []
    for fmt, kw in [
        ("JPEG", {}),
        ("JPEG", {"progressive": True}),
        ("PNG", {}),
        ("GIF", {}),
        ("WEBP", {}),
        ("BMP", {}),
        ("TIFF", {}),
        ("PNG", {"bits": 4}),
    ]:
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
            del data[pos : pos + draw(st.integers(1, 64))]
        else:  # corrupt the header, where sizes live
            data[min(pos, 32)] = draw(st.integers(0, 255))
    return bytes(data)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(SEEDS).map(lambda b: base64.b64encode(b).decode()),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "image",
                    "data",
                    "b64",
                    "topk",
                    "x",
                    "instances",
                    "inputs",
                    "shape",
                    "datatype",
                    "parameters",
                    "outputs",
                    "name",
                    "binary_data_size",
                    "id",
                ]
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=8,
)

requests_ = st.one_of(
    mutated_image().map(lambda b: {"body": b}),
    st.binary(max_size=512).map(lambda b: {"data": b}),
    st.text(max_size=200).map(lambda t: {"body": t}),
    json_values.map(lambda v: {"body": v}),  # as TorchServe hands over application/json
    json_values.map(lambda v: {"body": json.dumps(v).encode()}),  # the same as bytes
    st.dictionaries(st.text(max_size=8), st.binary(max_size=64), max_size=2),
)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(item=requests_, topk=st.one_of(st.none(), st.integers(-5, 200), st.text(max_size=4)))
def test_the_served_path_answers_every_input_with_pixels_or_a_4xx(handler, item, topk):
    try:
        request = read_request(item, {"x-topk": topk}.get, LIMITS)
    except RequestError as err:
        assert_client_error(err)
        return
    assert 1 <= request.topk <= LIMITS.max_topk and 1 <= len(request.images) <= LIMITS.max_images
    for image in request.images:
        pixels = handler._decode(image)
        if isinstance(pixels, RequestError):
            assert_client_error(pixels)
        else:
            assert pixels.shape == (3, 224, 224) and pixels.dtype == torch.uint8


def assert_client_error(err: RequestError) -> None:
    assert 400 <= err.code < 500, (err.code, err.type, err.message)
    assert err.type and err.message and err.reason().isascii()
