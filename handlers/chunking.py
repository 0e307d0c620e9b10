"""Forward passes in chunks of the fastest size, and in parallel single-threaded streams.

On a CPU a batch of 8 can run slower per image than two batches of 4: the activations of
the early layers stop fitting in cache (EfficientNet-Lite0 on this 2-core host: about 96
img/s at batch 4 against 71 at batch 8). The handler times every size at warm-up and runs
each TorchServe batch in chunks of the fastest one; TorchServe still batches as configured.

On a CPU worker with several torch threads, a batch with at least one image per thread runs
as that many single-threaded streams, each on its share of the images: no OpenMP barrier
between operators, so a core taken for a moment by the frontend or the decoding delays one
stream rather than every operator of one multi-threaded pass (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import time
from concurrent.futures import Executor
from typing import Callable

import torch

TIE = 0.03  # sizes within 3% of the best rate count as equal; the largest of them is kept


def pick_chunk(rates: dict[int, float]) -> int:
    """The largest batch size whose images/s is within TIE of the best (fewer passes)."""
    best = max(rates.values())
    return max(n for n, rate in rates.items() if rate >= best * (1 - TIE))


def candidate_sizes(batch_size: int) -> list[int]:
    """Every size up to 8, then powers of two and batch_size: timing stays cheap for big batches."""
    sizes = set(range(1, min(batch_size, 8) + 1)) | {batch_size}
    sizes |= {2**k for k in range(3, batch_size.bit_length()) if 2**k <= batch_size}
    return sorted(sizes)


def time_sizes(forward: Callable[[torch.Tensor], object], sizes, make_input, repeats: int = 2) -> dict[int, float]:
    """images/s of `forward` at each size: best of `repeats` timed runs (after warm-up)."""
    rates = {}
    for n in sizes:
        x = make_input(n)
        seconds = min(_timed(forward, x) for _ in range(repeats))
        rates[n] = n / max(seconds, 1e-9)
    return rates


def in_chunks(forward: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor, chunk: int) -> torch.Tensor:
    """`forward` over at most `chunk` images at a time, in parts as even as possible."""
    if len(pixels) <= chunk:
        return forward(pixels)
    parts = -(-len(pixels) // chunk)
    return torch.cat([forward(part) for part in torch.tensor_split(pixels, parts)])


def in_streams(forward: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor, pool: Executor,
               streams: int) -> torch.Tensor:
    """`forward` over `streams` even shares of the batch at once on `pool`, results in order."""
    return torch.cat(list(pool.map(forward, torch.tensor_split(pixels, streams))))


def _timed(forward, x) -> float:
    start = time.perf_counter()
    forward(x)
    return time.perf_counter() - start
