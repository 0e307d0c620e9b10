"""Forward passes in chunks of the fastest size, and in parallel single-threaded streams.

On a CPU a batch of 8 can run slower per image than two batches of 4: the activations of
the early layers stop fitting in cache (EfficientNet-Lite0 on this 2-core host: about 96
img/s at batch 4 against 71 at batch 8). The handler times every size at warm-up and runs
each TorchServe batch in chunks of the fastest one; TorchServe still batches as configured.

On a CPU worker with several torch threads, a batch with at least one image per thread runs
on that many single-threaded streams: no OpenMP barrier between operators, so a core taken for
a moment by the frontend or the decoding delays one stream rather than every operator of one
multi-threaded pass. The batch is cut into chunks of the size that runs fastest this way (timed
at warm-up: single-threaded passes favour smaller chunks than a multi-threaded one), and each
stream takes the next chunk when it is done with one, so a stream held up takes fewer
(docs/PERFORMANCE.md).
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


def time_sizes(forward: Callable[[torch.Tensor], object], sizes, make_input, repeats: int = 3) -> dict[int, float]:
    """images/s of `forward` at each size (after warm-up): the best of `repeats` rounds, each
    timing every size once, so a slow spell of a shared host touches all sizes alike."""
    inputs = {n: make_input(n) for n in sizes}
    seconds = _best_of_rounds({n: (lambda x=x: forward(x)) for n, x in inputs.items()}, repeats)
    return {n: n / s for n, s in seconds.items()}


def in_chunks(forward: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor, chunk: int) -> torch.Tensor:
    """`forward` over at most `chunk` images at a time, in parts as even as possible."""
    if len(pixels) <= chunk:
        return forward(pixels)
    parts = -(-len(pixels) // chunk)
    return torch.cat([forward(part) for part in torch.tensor_split(pixels, parts)])


def stream_parts(n: int, streams: int, chunk: int) -> int:
    """How many chunks `n` images run in on `streams` streams: chunks of at most `chunk` images,
    and at least one per stream (up to one image each) so that every stream has work."""
    return max(min(streams, n), -(-n // chunk))


def in_streams(forward: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor, pool: Executor,
               parts: int) -> torch.Tensor:
    """`forward` over the batch cut into `parts` parts as even as possible, run on `pool`'s
    threads as they come free; results in order."""
    return torch.cat(list(pool.map(forward, torch.tensor_split(pixels, parts))))


def time_stream_chunks(forward: Callable[[torch.Tensor], object], pixels: torch.Tensor, pool: Executor,
                       streams: int, chunks, repeats: int = 3) -> dict[int, float]:
    """images/s of the whole of `pixels` run on `pool` in chunks of each size in `chunks`: one
    untimed run per size (each thread's first pass at a shape), then the best of `repeats`
    rounds, each timing every size once."""
    runs = {}
    for chunk in chunks:
        parts = stream_parts(len(pixels), streams, chunk)
        runs[chunk] = lambda parts=parts: in_streams(forward, pixels, pool, parts)
        runs[chunk]()
    return {chunk: len(pixels) / s for chunk, s in _best_of_rounds(runs, repeats).items()}


def _best_of_rounds(runs: dict, repeats: int) -> dict:
    """Seconds per key: its fastest run over `repeats` rounds that run every key in turn."""
    best = {key: float("inf") for key in runs}
    for _ in range(repeats):
        for key, run in runs.items():
            start = time.perf_counter()
            run()
            best[key] = min(best[key], time.perf_counter() - start)
    return {key: max(seconds, 1e-9) for key, seconds in best.items()}
