"""ONNX export of the default model: verified with ONNX Runtime against the eager model on the
real photos before it is written, a dynamic batch, and the recipe, labels and version inside."""

from __future__ import annotations

import subprocess
import sys

import torch

from handlers.model.checkpoint import load_classifier
from modeltools.onnx_export import OnnxRunner, read_onnx_metadata
from tests.conftest import ROOT


def test_onnx_export_is_verified_and_carries_its_recipe(default_checkpoint, tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "export_model.py"),
            "--checkpoint",
            str(default_checkpoint),
            "--format",
            "onnx",
            "--output",
            str(tmp_path / "model.onnx"),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "top-1 differs on 0" in out.stdout
    model, info = load_classifier(default_checkpoint, torch.device("cpu"))
    meta = read_onnx_metadata(tmp_path / "model.onnx")
    assert meta["recipe"] == info.recipe.to_dict() and meta["labels"] == list(info.labels)
    assert (meta["version"], meta["architecture"]) == (info.version, info.architecture)
    runner = OnnxRunner(tmp_path / "model.onnx")
    for n in (1, 3):  # the batch dimension is dynamic
        x = torch.randn(n, 3, *info.recipe.crop_hw)
        with torch.inference_mode():
            assert (runner(x) - model(x)).abs().max() < 1e-3
