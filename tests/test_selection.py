"""Backend selection at load: every available backend and precision verified against the
archive's reference photos, the fastest verified one serving, the decision cached for the next
worker, and the settings narrowing the choice."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch

from handlers.model import selection
from handlers.model.checkpoint import load_classifier, read_info
from handlers.model.engine import EngineOptions
from handlers.model.onnx_backends import OnnxRuntimeBackend
from handlers.model.reference import FILE, ReferenceSet
from handlers.model.selection import choose_engine
from tests.conftest import ROOT, labelled_photos
from tests.handler_harness import make_context, run_batch

CPU = torch.device("cpu")


def choose(archive, tmp_path, **options):
    artifact = archive / "efficientnet_lite0.pt"
    info = read_info(artifact)
    builds = []

    def build_torch():
        builds.append("torch")
        return load_classifier(artifact, CPU, True)[0]

    engine, chosen = choose_engine(
        info.recipe, CPU, 8, EngineOptions(**options), build_torch, archive / "model.onnx",
        ReferenceSet.load(archive / FILE), tmp_path / "cache",
    )  # fmt: skip
    return engine, chosen, builds


@pytest.fixture
def archive(served_archive, tmp_path):
    """A private copy: each test writes its own cache."""
    pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed: only the torch backend serves")
    pytest.importorskip("openvino", reason="OpenVINO is not installed")
    copy = tmp_path / "model"
    shutil.copytree(served_archive, copy)
    return copy


def test_every_backend_is_verified_and_the_fastest_verified_one_serves(archive, tmp_path):
    engine, chosen, _ = choose(archive, tmp_path)
    measured = chosen.measured
    assert {"torch/float32", "onnxruntime/float32", "openvino/float32"} <= set(measured)
    for label, result in measured.items():
        assert "error" not in result, (label, result)
        if label.endswith("float32"):  # float32 runtimes differ from eager by rounding only
            assert result["verified"] and result["top1_agree"] == "8/8" and result["max_prob_diff"] <= 1e-3, label
    timed = {label: r["ms_per_image"] for label, r in measured.items() if r["verified"]}
    assert chosen.chosen == min(timed, key=timed.get) and measured[chosen.chosen]["verified"]
    assert f"{engine.backend.name}/{engine.backend.precision}" == chosen.chosen and engine.warmup_ms > 0


def test_a_worker_started_again_builds_only_the_cached_choice(archive, tmp_path):
    first, chosen, builds = choose(archive, tmp_path, backend="auto")
    assert not chosen.from_cache and builds  # the torch candidates were built to be measured
    again, cached, builds = choose(archive, tmp_path, backend="auto")
    assert cached.from_cache and cached.chosen == chosen.chosen and cached.measured == chosen.measured
    assert builds == ([] if not chosen.chosen.startswith("torch") else ["torch"])
    reference = ReferenceSet.load(archive / FILE)
    assert torch.equal(first.run(reference.pixels).logits.argmax(1), again.run(reference.pixels).logits.argmax(1))


def test_a_backend_that_changes_the_answers_never_serves(archive, tmp_path, monkeypatch):
    real = OnnxRuntimeBackend.run

    def rolled(self, pixels):  # a runtime bug: every image answered with its neighbour's logits
        logits, splits = real(self, pixels)
        return logits.roll(1, dims=0), splits

    monkeypatch.setattr(OnnxRuntimeBackend, "run", rolled)
    _, chosen, _ = choose(archive, tmp_path, precision="float32")
    refused = chosen.measured["onnxruntime/float32"]
    assert not refused["verified"] and refused["top1_agree"] != "8/8" and "ms_per_image" not in refused
    assert chosen.chosen != "onnxruntime/float32"
    with pytest.raises(RuntimeError, match="no backend passed verification"):  # forced, it refuses to start
        choose(archive, tmp_path / "forced", backend="onnxruntime")


def test_settings_force_a_backend_and_a_precision(archive, tmp_path):
    engine, chosen, builds = choose(archive, tmp_path, backend="openvino", precision="float32")
    assert chosen.chosen == "openvino/float32" and list(chosen.measured) == ["openvino/float32"] and builds == []
    assert chosen.why == "the only candidate the settings allow"
    _, chosen, _ = choose(archive, tmp_path / "b", precision="float32")
    assert all(label.endswith("/float32") for label in chosen.measured)


def test_without_reference_photos_only_torch_float32_serves(archive, tmp_path):
    (archive / FILE).unlink()
    engine, chosen, _ = choose(archive, tmp_path)
    assert chosen.chosen == "torch/float32" and "no reference photos" in str(chosen.unavailable)


def test_a_backend_not_installed_is_named_with_its_reason(archive, tmp_path, monkeypatch):
    monkeypatch.setattr(selection, "onnxruntime_providers", lambda device: None)
    monkeypatch.setattr(selection, "openvino_precisions", lambda device: [])
    _, chosen, _ = choose(archive, tmp_path)
    assert set(chosen.measured) <= {"torch/float32", "torch/bfloat16"}
    assert "onnxruntime is not installed" in chosen.unavailable["onnxruntime"]
    assert "openvino is not installed" in chosen.unavailable["openvino"]
    with pytest.raises(ValueError, match="no backend here matches backend=openvino"):
        choose(archive, tmp_path / "b", backend="openvino")


def test_the_handler_serves_the_labelled_photos_with_the_chosen_backend(archive, photos):
    from handlers.image_classifier import ImageClassifier

    handler = ImageClassifier()
    handler.initialize(make_context(archive, "efficientnet_lite0.pt"))
    health = handler.describe_handle()
    assert health["engine_selection"]["chosen"] == f"{health['backend']}/{health['precision']}"
    names = [n for n, ok in labelled_photos().items() if ok]
    for name, answer in zip(names, run_batch(handler, [{"body": photos[n]} for n in names])):
        assert answer.body[0]["label"] in labelled_photos()[name], (name, health["backend"], answer.body[0])


def test_a_worker_imports_openvino_without_its_telemetry():
    # openvino's import otherwise forks a process that posts a usage event, in every worker at load
    pytest.importorskip("openvino")
    code = (
        "import sys, handlers.image_classifier\n"
        "from handlers.model.onnx_backends import openvino_precisions\n"
        "openvino_precisions(__import__('torch').device('cpu'))\n"
        "import openvino.tools.ovc.telemetry_utils as t\n"
        "print(t.tm.__name__, sys.modules['openvino_telemetry'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["openvino.tools.ovc.telemetry_stub", "None"]
