"""Bounded decoding memory: the pixel budget, lean 16-bit/float conversion, giving memory back."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from PIL import Image

from handlers.request.budget import DecodeBudget, release_freed_memory
from handlers.request.decoding import _block_to_uint8, _to_uint8


def _peak_in_flight(budget: DecodeBudget, sizes: list[int]) -> int:
    peak, lock = [0], threading.Lock()

    def decode(n):
        with budget.hold(n):
            with lock:
                peak[0] = max(peak[0], budget.in_use)
            time.sleep(0.05)

    threads = [threading.Thread(target=decode, args=(n,)) for n in sizes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    return peak[0]


def test_large_images_decode_one_at_a_time_and_small_ones_together():
    assert _peak_in_flight(DecodeBudget(100), [100, 100, 100]) == 100
    assert _peak_in_flight(DecodeBudget(100), [10] * 8) == 80


def test_an_image_over_the_whole_budget_still_decodes_alone():
    budget = DecodeBudget(100)
    assert _peak_in_flight(budget, [500, 10]) in (500, 10)  # never together, never stuck
    assert budget.in_use == 0 and budget.take_decoded() == 510 and budget.take_decoded() == 0


def test_sixteen_bit_conversion_is_exact_rounding_of_v_over_257():
    v = np.arange(65536, dtype=np.uint16)
    expected = np.clip(v.astype(np.float64) / 257.0, 0, 255).round().astype(np.uint8)
    assert np.array_equal(_to_uint8(Image.fromarray(v.reshape(256, 256))), expected.reshape(256, 256))
    assert np.array_equal(
        _to_uint8(Image.fromarray(np.array([[-5, 70000]], dtype=np.int32))), np.array([[0, 255]], dtype=np.uint8)
    )


@pytest.mark.parametrize("scale", [1.0, 255.0])
def test_float_conversion_matches_the_float64_reference_within_one_level(scale):
    rng = np.random.default_rng(0)
    f = (rng.random(10_000) * scale).astype(np.float32)
    f[:3] = [np.nan, np.inf, -np.inf]
    top = 1.0 if scale == 1.0 else 255.0
    ref = np.clip(np.nan_to_num(f.astype(np.float64), nan=0, posinf=0, neginf=0) * (255.0 / top), 0, 255).round()
    got = _to_uint8(Image.fromarray(f.reshape(100, 100))).reshape(-1)
    assert got.dtype == np.uint8 and np.abs(got.astype(int) - ref.astype(int)).max() <= 1
    assert list(got[:3]) == [0, 0, 0]


@pytest.mark.parametrize(
    "mode, dtype, top",
    [("I;16", np.uint16, 65535), ("I", np.int32, 65535), ("F", np.float32, 1.0), ("F", np.float32, 255.0)],
)
def test_a_pillow_image_converts_block_by_block_as_in_one_block(mode, dtype, top):
    rng = np.random.default_rng(1)
    arr = (rng.random((1500, 1100)) * top).astype(dtype)  # several blocks of rows
    img = Image.fromarray(arr)
    assert img.mode == mode and np.array_equal(np.asarray(img), arr)
    whole = _block_to_uint8(arr, np.float32(255.0) if top == 1.0 else None)  # the whole image as one block
    assert np.array_equal(_to_uint8(img), whole)
    assert _to_uint8(img).max() >= 250  # scaled to the full 8-bit range, not clipped or left dark


def test_freed_memory_is_given_back_on_glibc():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc_trim is glibc's")
    blocks = [bytearray(64 * 1024) for _ in range(2000)]  # 128 MB of heap chunks, then freed
    del blocks
    assert release_freed_memory() is True
