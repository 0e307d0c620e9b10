"""Fixtures shared by the in-process and the real-server tests of checkpoint formats."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from handlers.model.checkpoint import read_checkpoint
from tests.conftest import ROOT


def script(name, *args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def imagenet_labels(tmp_path_factory, default_checkpoint):
    _, info = read_checkpoint(default_checkpoint)
    path = tmp_path_factory.mktemp("labels") / "index_to_name.json"
    path.write_text(json.dumps({str(i): ["n000", l] for i, l in enumerate(info.labels)}))
    return path


@pytest.fixture(scope="module")
def converted_default(default_checkpoint, imagenet_labels, tmp_path_factory):
    """The default weights as a DDP + torch.compile training checkpoint, converted back."""
    tmp = tmp_path_factory.mktemp("conv")
    sd, _ = read_checkpoint(default_checkpoint)
    torch.save({"state_dict": {f"module._orig_mod.{k}": v for k, v in sd.items()}, "optimizer": {}, "epoch": 90}, tmp / "train.ckpt")
    out = script("convert_checkpoint.py", "--input", tmp / "train.ckpt", "--architecture", "timm:tf_efficientnet_lite0",
                 "--labels", imagenet_labels, "--output", tmp / "converted.pt")
    assert out.returncode == 0, out.stderr
    return tmp / "converted.pt"


@pytest.fixture(scope="module")
def exported(converted_default, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exp")
    paths = {}
    for fmt, name in (("torchscript", "model.ts.pt"), ("export", "model.pt2")):
        out = script("export_model.py", "--checkpoint", converted_default, "--format", fmt, "--output", tmp / name)
        assert out.returncode == 0, out.stderr
        assert "top-1 differs on 0" in out.stdout
        paths[fmt] = tmp / name
    return paths
