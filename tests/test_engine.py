"""The engine on its own (no TorchServe): pass sizes, CPU streams, OOM splitting, precision,
and the same answers under every engine configuration."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from torch import nn

from handlers.model.checkpoint import load_classifier
from handlers.model.engine import CPU_CHUNK, Engine, EngineOptions
from handlers.model.recipe import Recipe
from handlers.request.pixels import image_pixels
from tests.conftest import labelled_photos

CPU = torch.device("cpu")
TINY = Recipe(crop_size=8, resize_size=8)


class Recording(nn.Module):
    """Logits = per-image mean of each channel; records (images, thread, torch threads) per pass."""

    def __init__(self, memory_for: int | None = None):
        super().__init__()
        self.calls, self.memory_for = [], memory_for

    def forward(self, x):
        self.calls.append((len(x), threading.get_ident(), torch.get_num_threads()))
        time.sleep(0.02)  # as long as a real pass, so a free stream takes the next chunk
        if self.memory_for is not None and len(x) > self.memory_for:
            raise torch.OutOfMemoryError("simulated: pass too large")
        return x.mean(dim=(2, 3))


def tiny_engine(batch_size=8, **options) -> tuple[Engine, Recording]:
    model = Recording(options.pop("memory_for", None)).eval()
    engine = Engine(model, TINY, CPU, batch_size, EngineOptions(graph="eager", **options))
    model.calls.clear()  # warm-up passes
    return engine, model


def pixels(n: int) -> torch.Tensor:
    return torch.arange(n * 3 * 64, dtype=torch.uint8).view(n, 3, 8, 8)


@pytest.mark.parametrize("n, sizes", [(8, [4, 4]), (7, [4, 3]), (3, [3]), (1, [1]), (5, [3, 2])])
def test_cpu_passes_hold_at_most_cpu_chunk_images_in_even_parts(n, sizes):
    engine, model = tiny_engine(cpu_streams=False)
    run = engine.run(pixels(n))
    assert [c[0] for c in model.calls] == sizes and CPU_CHUNK == 4
    assert run.logits.shape == (n, 3) and run.logits.dtype == torch.float32 and run.oom_splits == 0
    expected = (
        (pixels(n).float() / 255 - torch.tensor(TINY.mean).view(1, 3, 1, 1)) / torch.tensor(TINY.std).view(1, 3, 1, 1)
    ).mean(dim=(2, 3))
    assert torch.allclose(run.logits, expected, atol=1e-6)  # normalised by the recipe, in order


def test_batch_size_below_the_chunk_is_one_pass():
    engine, model = tiny_engine(batch_size=2, cpu_streams=False)
    engine.run(pixels(2))
    assert [c[0] for c in model.calls] == [2] and engine.describe()["chunk_size"] == 2


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield 2
    torch.set_num_threads(before)


def test_a_full_batch_runs_on_one_single_threaded_stream_per_torch_thread(two_threads):
    engine, model = tiny_engine()
    assert engine.describe()["cpu_streams"] == 2
    engine.run(pixels(8))
    assert sorted(c[0] for c in model.calls) == [4, 4]
    assert len({c[1] for c in model.calls}) == 2 and threading.get_ident() not in {c[1] for c in model.calls}
    assert {c[2] for c in model.calls} == {1}


def test_fewer_images_than_threads_run_as_one_multi_threaded_pass(two_threads):
    engine, model = tiny_engine()
    engine.run(pixels(1))
    assert model.calls == [(1, threading.get_ident(), 2)]


def test_streams_off_run_every_pass_on_the_calling_thread(two_threads):
    engine, model = tiny_engine(cpu_streams=False)
    engine.run(pixels(8))
    assert engine.describe()["cpu_streams"] is None and {c[1] for c in model.calls} == {threading.get_ident()}


@pytest.mark.parametrize("streams", [False, True])
def test_out_of_memory_halves_passes_and_answers_every_image(two_threads, streams):
    reference, _ = tiny_engine(cpu_streams=False)
    engine, model = tiny_engine(cpu_streams=streams, memory_for=1)
    run = engine.run(pixels(8))
    assert torch.allclose(run.logits, reference.run(pixels(8)).logits)
    assert run.oom_splits == 6  # each pass of 4 halves into 2 + 2, then 1 + 1 + 1 + 1: 3 splits per pass
    engine.run(pixels(2))  # streams: one image per stream, nothing to split; one pass: one split
    assert engine.describe()["oom_batch_splits"] == 6 + (not streams) and engine.describe()["images_run"] == 10


def test_a_model_that_cannot_run_one_image_fails_at_load_not_at_the_first_request():
    with pytest.raises(torch.OutOfMemoryError):
        tiny_engine(cpu_streams=False, memory_for=0)


@pytest.mark.parametrize(
    "precision, cpu, cuda",
    [
        ("auto", None, None),
        ("float32", None, None),
        ("int8", None, None),  # int8 runs on the ONNX backends; a torch engine stays float32
        ("bfloat16", torch.bfloat16, torch.bfloat16),
        ("float16", torch.float16, torch.float16),
    ],
)
def test_precision_gives_the_autocast_dtype_per_device(precision, cpu, cuda):
    options = EngineOptions(precision=precision)
    assert options.autocast_dtype(CPU) == cpu and options.autocast_dtype(torch.device("cuda")) == cuda


def test_cpu_autocast_runs_eagerly_and_says_so():
    engine, _ = tiny_engine(precision="bfloat16")
    assert engine.describe()["dtype"] == "bfloat16" and engine.describe()["graph"] == "eager"


# -- the same answers under each engine configuration, on the default model and real photos --
CONFIGURATIONS = {
    "served (frozen, fused, static padding, channels_last, streams)": {},
    "eager": {"graph": "eager"},
    "no streams": {"cpu_streams": False},
    "run-time padding": {"static_padding": False},
    "no oneDNN fusion": {"onednn_fusion": False},
    "contiguous memory": {"channels_last": False},
}


@pytest.fixture(scope="module")
def photo_pixels(default_checkpoint):
    _, info = load_classifier(default_checkpoint, CPU)
    names = list(labelled_photos())
    from tests.conftest import IMAGES

    return names, torch.stack([image_pixels((IMAGES / n).read_bytes(), 10**9, info.recipe) for n in names])


@pytest.fixture(scope="module")
def reference_probs(default_checkpoint, photo_pixels):
    """The eager float32 model, one image at a time, without any engine optimisation."""
    model, info = load_classifier(default_checkpoint, CPU)
    from handlers.model.recipe import normalize

    with torch.inference_mode():
        return torch.cat([model(normalize(p[None], info.recipe)) for p in photo_pixels[1]]).softmax(1)


@pytest.mark.parametrize("name", CONFIGURATIONS)
def test_every_engine_configuration_gives_the_reference_answers(
    default_checkpoint, photo_pixels, reference_probs, name
):
    options = CONFIGURATIONS[name]
    model, info = load_classifier(default_checkpoint, CPU, options.get("channels_last", True))
    engine = Engine(model, info.recipe, CPU, 8, EngineOptions(**options))
    expected_graph = "eager" if options.get("graph") == "eager" else "frozen"
    assert engine.describe()["graph"] == expected_graph, engine.describe()["graph_note"]
    assert engine.describe()["static_padding_convs"] == (0 if name == "run-time padding" else 5)
    names, px = photo_pixels
    probs = torch.cat([engine.run(part).logits for part in torch.split(px, 8)]).softmax(1)
    assert torch.equal(probs.argmax(1), reference_probs.argmax(1))
    assert (probs - reference_probs).abs().max() < 1e-3
    for name_, index in zip(names, probs.argmax(1).tolist()):
        if labelled_photos()[name_]:
            assert info.labels[index] in labelled_photos()[name_], name_
