"""Batches run in chunks of the size timed fastest at warm-up; answers do not depend on it."""

from __future__ import annotations

import pytest
import torch

from handlers.chunking import candidate_sizes, in_chunks, pick_chunk, time_sizes
from handlers.settings import Settings
from tests.conftest import labelled_photos
from tests.handler_harness import load_handler, run_batch


def test_pick_chunk_keeps_the_largest_size_tied_with_the_best():
    assert pick_chunk({1: 70.0, 2: 88.0, 3: 96.0, 4: 95.0, 5: 94.0, 8: 71.0}) == 5  # 94 is within 3% of 96
    assert pick_chunk({1: 10.0, 2: 20.0, 4: 40.0, 8: 80.0}) == 8
    assert pick_chunk({1: 50.0, 2: 30.0}) == 1


@pytest.mark.parametrize("n, chunk, sizes", [(8, 5, [4, 4]), (7, 3, [3, 2, 2]), (3, 5, [3]), (8, 8, [8]), (1, 1, [1])])
def test_in_chunks_splits_evenly_and_keeps_order(n, chunk, sizes):
    seen = []

    def forward(x):
        seen.append(len(x))
        return x * 2

    x = torch.arange(n, dtype=torch.float32).view(n, 1)
    assert torch.equal(in_chunks(forward, x, chunk), x * 2)
    assert seen == sizes


def test_candidate_sizes_cover_small_batches_fully_and_large_ones_by_powers_of_two():
    assert candidate_sizes(1) == [1]
    assert candidate_sizes(8) == list(range(1, 9))
    assert candidate_sizes(12) == [1, 2, 3, 4, 5, 6, 7, 8, 12]
    assert candidate_sizes(64) == [1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 64]


def test_time_sizes_reports_images_per_second_for_each_size_timed_in_interleaved_rounds():
    seen = []

    def forward(x):
        seen.append(len(x))
        return x.sum()

    rates = time_sizes(forward, range(1, 4), lambda n: torch.ones(n, 10), repeats=2)
    assert sorted(rates) == [1, 2, 3] and all(r > 0 for r in rates.values())
    assert seen == [1, 2, 3, 1, 2, 3]


def test_negative_chunk_size_is_refused():
    with pytest.raises(ValueError, match="chunk_size"):
        Settings.from_model_yaml({"handler": {"chunk_size": -1}})


def test_tuned_and_fixed_chunks_give_the_same_answers(default_checkpoint, photos, tmp_path):
    tuned = load_handler(default_checkpoint, tmp_path / "tuned", batch_size=8)
    whole = load_handler(default_checkpoint, tmp_path / "whole", {"handler": {"chunk_size": 8}}, batch_size=8)
    three = load_handler(default_checkpoint, tmp_path / "three", {"handler": {"chunk_size": 3}}, batch_size=8)
    assert sorted(tuned.chunk_rates) == list(range(1, 9))
    assert tuned.chunk == pick_chunk(tuned.chunk_rates) and tuned.describe_handle()["chunk_size"] == tuned.chunk
    assert (whole.chunk, whole.chunk_rates, three.chunk) == (8, None, 3)
    names = list(labelled_photos())
    items = [{"data": photos[n]} for n in names]
    runs = [run_batch(h, items) for h in (tuned, whole, three)]
    for i, name in enumerate(names):
        labels = {r[i].body[0]["label"] for r in runs}
        assert len(labels) == 1, (name, labels)
        probs = [r[i].body[0]["probability"] for r in runs]
        assert max(probs) - min(probs) < 1e-3
        if labelled_photos()[name]:
            assert labels.pop() in labelled_photos()[name]
