"""CPU batches with one image per torch thread or more run as parallel single-threaded streams."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from handlers.chunking import in_streams, stream_parts, time_stream_chunks
from handlers.device import single_threaded_torch
from tests.conftest import labelled_photos
from tests.handler_harness import load_handler, run_batch


@pytest.mark.parametrize("n, streams, chunk, parts", [
    (8, 2, 4, 2), (8, 2, 2, 4), (8, 2, 3, 3), (8, 2, 1, 8), (8, 2, 8, 2),  # every stream gets work
    (5, 2, 2, 3), (2, 2, 4, 2), (1, 2, 4, 1), (6, 3, 2, 3), (6, 4, 6, 4),
])
def test_stream_parts_are_chunks_at_most_chunk_and_at_least_one_per_stream(n, streams, chunk, parts):
    assert stream_parts(n, streams, chunk) == parts


@pytest.mark.parametrize("n, parts, sizes", [(8, 2, [4, 4]), (5, 2, [3, 2]), (6, 3, [2, 2, 2]), (8, 4, [2, 2, 2, 2])])
def test_in_streams_splits_evenly_runs_on_the_pool_and_keeps_order(n, parts, sizes):
    seen = []

    def forward(x):
        seen.append((len(x), threading.get_ident(), torch.get_num_threads()))
        return x * 2

    x = torch.arange(n, dtype=torch.float32).view(n, 1)
    with ThreadPoolExecutor(2, initializer=single_threaded_torch) as pool:
        assert torch.equal(in_streams(forward, x, pool, parts), x * 2)
    assert sorted(s for s, _, _ in seen) == sorted(sizes)
    assert threading.get_ident() not in {t for _, t, _ in seen}
    assert {k for _, _, k in seen} == {1}


def test_time_stream_chunks_times_the_whole_batch_in_chunks_of_each_size():
    seen = []

    def forward(x):
        seen.append(len(x))
        return x

    with ThreadPoolExecutor(2) as pool:
        rates = time_stream_chunks(forward, torch.zeros(8, 1), pool, 2, [1, 2, 4], repeats=2)
    assert list(rates) == [1, 2, 4] and all(r > 0 for r in rates.values())
    # one untimed run per size, then two rounds that each time every size in turn (a slow
    # spell of the host touches all sizes alike); every run covers all 8 images
    one_round = [1] * 8 + [2] * 4 + [4] * 2
    assert seen == one_round * 3


def _record_forward(handler, monkeypatch) -> list:
    calls, real = [], handler.model

    def model(x):
        calls.append((len(x), threading.get_ident(), torch.get_num_threads()))
        return real(x)

    monkeypatch.setattr(handler, "model", model)
    return calls


@pytest.fixture(scope="module")
def two_handlers(default_checkpoint, tmp_path_factory):
    if torch.get_num_threads() < 2:
        pytest.skip("one torch thread: a single stream is the multi-threaded pass")
    streamed = load_handler(default_checkpoint, tmp_path_factory.mktemp("streamed"), batch_size=8)
    single = load_handler(default_checkpoint, tmp_path_factory.mktemp("single"),
                          {"handler": {"cpu_streams": False}}, batch_size=8)
    return streamed, single


def test_a_full_batch_runs_on_one_single_threaded_stream_per_torch_thread(two_handlers, photos, monkeypatch):
    streamed, single = two_handlers
    threads = torch.get_num_threads()
    assert streamed.stream_count == threads and streamed.describe_handle()["cpu_streams"] == threads
    assert single.streams is None and single.describe_handle()["cpu_streams"] is None
    # the stream chunk size was timed at warm-up, over sizes up to an even share per stream
    rates = streamed.stream_chunk_rates
    assert list(rates) == list(range(1, -(-8 // threads) + 1))
    assert streamed.stream_chunk in rates and streamed.describe_handle()["stream_chunk_size"] == streamed.stream_chunk
    calls = _record_forward(streamed, monkeypatch)
    names = sorted(photos)[:8]
    run_batch(streamed, [{"body": photos[n]} for n in names])
    assert sorted(n for n, _, _ in calls) == sorted(
        len(p) for p in torch.tensor_split(torch.zeros(8), stream_parts(8, threads, streamed.stream_chunk)))
    assert len({t for _, t, _ in calls}) == threads  # every stream thread took a chunk
    assert threading.get_ident() not in {t for _, t, _ in calls}
    assert {k for _, _, k in calls} == {1}


def test_fewer_images_than_threads_run_as_one_multi_threaded_pass(two_handlers, photos, monkeypatch):
    streamed, _ = two_handlers
    calls = _record_forward(streamed, monkeypatch)
    run_batch(streamed, [{"body": photos["kitten.jpg"]}])
    assert calls == [(1, threading.get_ident(), torch.get_num_threads())]


def test_streams_give_the_multi_threaded_pass_answers(two_handlers, photos):
    names = list(labelled_photos())
    items = [{"body": photos[n]} for n in names]
    runs = [run_batch(h, items) for h in two_handlers]
    for i, name in enumerate(names):
        (a, b) = (r[i].body[0] for r in runs)
        assert a["label"] == b["label"], name
        assert abs(a["probability"] - b["probability"]) < 1e-3, name


def test_out_of_memory_in_a_stream_splits_that_share_and_answers_everything(two_handlers, photos, monkeypatch):
    streamed, _ = two_handlers
    real = streamed.model

    def memory_for_one(x):
        if len(x) > 1:
            raise torch.OutOfMemoryError("simulated: batch too large")
        return real(x)

    monkeypatch.setattr(streamed, "model", memory_for_one)
    monkeypatch.setattr(streamed, "oom_splits", 0)
    names = [n for n, ok in labelled_photos().items() if ok][:5]
    answers = run_batch(streamed, [{"body": photos[n]} for n in names])
    for name, answer in zip(names, answers):
        assert answer.body[0]["label"] in labelled_photos()[name], (name, answer)
    parts = stream_parts(len(names), streamed.stream_count, streamed.stream_chunk)
    assert streamed.oom_splits == len(names) - parts  # each chunk of k images splits k - 1 times
