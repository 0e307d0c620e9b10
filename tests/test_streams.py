"""CPU batches with one image per torch thread or more run as parallel single-threaded streams."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from handlers.chunking import in_streams
from handlers.device import single_threaded_torch
from tests.conftest import labelled_photos
from tests.handler_harness import load_handler, run_batch


@pytest.mark.parametrize("n, streams, sizes", [(8, 2, [4, 4]), (5, 2, [3, 2]), (6, 3, [2, 2, 2])])
def test_in_streams_splits_evenly_runs_on_the_pool_and_keeps_order(n, streams, sizes):
    seen = []

    def forward(x):
        seen.append((len(x), threading.get_ident(), torch.get_num_threads()))
        return x * 2

    x = torch.arange(n, dtype=torch.float32).view(n, 1)
    with ThreadPoolExecutor(streams, initializer=single_threaded_torch) as pool:
        assert torch.equal(in_streams(forward, x, pool, streams), x * 2)
    assert sorted(s for s, _, _ in seen) == sorted(sizes)
    assert threading.get_ident() not in {t for _, t, _ in seen}
    assert {k for _, _, k in seen} == {1}


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


def test_a_full_batch_runs_as_one_single_threaded_stream_per_torch_thread(two_handlers, photos, monkeypatch):
    streamed, single = two_handlers
    threads = torch.get_num_threads()
    assert streamed.stream_count == threads and streamed.describe_handle()["cpu_streams"] == threads
    assert single.streams is None and single.describe_handle()["cpu_streams"] is None
    calls = _record_forward(streamed, monkeypatch)
    names = sorted(photos)[:8]
    run_batch(streamed, [{"body": photos[n]} for n in names])
    assert sum(n for n, _, _ in calls) == len(names)
    assert len({t for _, t, _ in calls}) == min(threads, len(names))  # one thread per stream
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
    assert streamed.oom_splits == len(names) - streamed.stream_count  # each share of k images splits k - 1 times
