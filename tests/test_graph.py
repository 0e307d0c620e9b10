"""The served graph: frozen on CPU when it matches eager, eager otherwise, with the reason."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from handlers.model.graph import build_graph, check_same, example_inputs, resolve_mode
from handlers.settings import Settings
from tests.conftest import labelled_photos
from tests.handler_harness import load_handler, run_batch

CPU = torch.device("cpu")


def identity(x):
    return x.float()


class Branchy(nn.Module):
    """Data-dependent Python control flow: a trace would keep only the branch it saw."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        pooled = x.mean((2, 3))
        if pooled.sum() > 0:
            return self.fc(pooled)
        return -self.fc(pooled)


class IllConditioned(nn.Module):
    """Batch norm over a large offset with a tiny variance: folding it into the convolution
    changes float rounding enough to move the logits, and only the comparison with eager
    (not torch.jit.trace's own checks) sees it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4, eps=0.0)
        with torch.no_grad():
            self.conv.bias.fill_(1e7)
            self.bn.running_mean.fill_(1e7)
            self.bn.running_var.fill_(1e-6)

    def forward(self, x):
        return self.bn(self.conv(x)).mean((2, 3))


def test_auto_is_frozen_on_cpu_and_eager_on_cuda_or_with_cpu_autocast():
    assert resolve_mode("auto", CPU, autocast=False) == "freeze"
    assert resolve_mode("auto", CPU, autocast=True) == "eager"
    assert resolve_mode("auto", torch.device("cuda", 0), autocast=True) == "eager"
    assert resolve_mode("compile", CPU, autocast=False) == "compile"


def test_unknown_graph_setting_is_refused():
    with pytest.raises(ValueError, match="graph must be one of"):
        Settings.from_model_yaml({"handler": {"graph": "fast"}})


@pytest.mark.parametrize(
    "model, reason", [(Branchy(), "tracing warned"), (IllConditioned(), "largest logit difference")]
)
def test_a_model_the_trace_would_change_is_served_eagerly(model, reason):
    model.eval()
    graph = build_graph(model, "freeze", example_inputs([1, 2, 8], 8, identity, True, CPU))
    assert graph.kind == "eager" and graph.module is model
    assert reason in graph.note


def test_check_same_refuses_shape_and_value_changes():
    ref = torch.tensor([[1.0, 20.0]])
    check_same(ref, ref + 0.01, "ok")  # within 1e-3 of the largest logit
    with pytest.raises(ValueError, match="shape"):
        check_same(ref, torch.zeros(2, 2), "b")
    with pytest.raises(ValueError, match="logit difference"):
        check_same(ref, ref + 0.1, "c")


def test_eager_setting_serves_the_eager_module_with_the_same_labels(default_checkpoint, photos, tmp_path):
    handler = load_handler(default_checkpoint, tmp_path, {"handler": {"graph": "eager"}}, batch_size=2)
    assert handler.engine.graph.kind == "eager"
    assert not any(m.training for m in handler.engine.graph.module.modules())
    names = [n for n, ok in labelled_photos().items() if ok][:2]
    answers = run_batch(handler, [{"data": photos[n]} for n in names])
    for name, answer in zip(names, answers):
        assert answer.status == 200 and answer.body[0]["label"] in labelled_photos()[name]
    health = handler.describe_handle()
    assert health["graph"] == "eager" and health["warmup_ms"] > 0


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.body(x).flatten(1))


@pytest.mark.skipif(shutil.which("cc") is None, reason="torch.compile on CPU needs a C compiler")
def test_compile_mode_compiles_every_batch_size_and_matches_eager():
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = SmallNet().eval()
    with torch._dynamo.config.patch(recompile_limit=2):  # below the 4 batch sizes used here
        graph = build_graph(model, "compile", example_inputs([1, 4], 8, identity, False, CPU))
        assert graph.kind == "compiled", graph.note
        with torch.inference_mode():
            for n in (2, 3):  # the other sizes, compiled at first use as at warm-up
                x = torch.rand(n, 3, 8, 8) * 255
                check_same(model(x), graph.module(x), f"batch of {n}")
    # one graph per batch size: none fell back to eager at dynamo's recompile limit
    assert counters["stats"]["unique_graphs"] == 4


def test_a_graph_failing_at_warm_up_is_replaced_by_the_eager_model(default_checkpoint, tmp_path, monkeypatch):
    import handlers.model.torch_backend as ic

    class FailsFromBatchThree(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            if len(x) >= 3:
                raise RuntimeError("partition compile failed (simulated)")
            return self.inner(x)

    real_build = ic.build_graph

    def build_then_break(model, mode, *args, **kwargs):
        graph = real_build(model, mode, *args, **kwargs)
        graph.module = FailsFromBatchThree(graph.module)
        return graph

    monkeypatch.setattr(ic, "build_graph", build_then_break)
    # one multi-threaded pass per batch, so a batch of 3 is a pass of 3, which verification
    # (passes of 1, 2 and 4) does not cover
    handler = load_handler(
        default_checkpoint, tmp_path, {"handler": {"diagnostics": {"disable": ["cpu_streams"]}}}, batch_size=4
    )
    graph = handler.engine.graph
    assert graph.kind == "eager" and "failed at warm-up" in graph.note
    assert not isinstance(graph.module, FailsFromBatchThree) and handler.engine.warmup_ms > 0
    assert handler.describe_handle()["graph_note"].startswith("frozen graph failed at warm-up")
