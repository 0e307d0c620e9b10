"""Fixtures shared by the in-process and the real-server tests of checkpoint formats."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from handlers.model.checkpoint import read_checkpoint
from tests.conftest import ROOT


def script(name, *args):
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / name), *map(str, args)], capture_output=True, text=True
    )


def _shared(tmp_path_factory, name: str) -> Path:
    """A folder of this test session's, the same for every module that imports these fixtures:
    what one module built (a conversion, an export), the next one reuses."""
    path = tmp_path_factory.getbasetemp() / "byom" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def imagenet_labels(tmp_path_factory, default_checkpoint):
    path = _shared(tmp_path_factory, "labels") / "index_to_name.json"
    if not path.exists():
        _, info = read_checkpoint(default_checkpoint)
        path.write_text(json.dumps({str(i): ["n000", label] for i, label in enumerate(info.labels)}))
    return path


@pytest.fixture(scope="module")
def converted_default(default_checkpoint, imagenet_labels, tmp_path_factory):
    """The default weights as a DDP + torch.compile training checkpoint, converted back."""
    tmp = _shared(tmp_path_factory, "conv")
    if (tmp / "converted.pt").exists():
        return tmp / "converted.pt"
    sd, _ = read_checkpoint(default_checkpoint)
    torch.save(
        {"state_dict": {f"module._orig_mod.{k}": v for k, v in sd.items()}, "optimizer": {}, "epoch": 90},
        tmp / "train.ckpt",
    )
    out = script(
        "convert_checkpoint.py",
        "--input",
        tmp / "train.ckpt",
        "--architecture",
        "timm:tf_efficientnet_lite0",
        "--labels",
        imagenet_labels,
        "--output",
        tmp / "converted.pt",
    )
    assert out.returncode == 0, out.stderr
    return tmp / "converted.pt"


@pytest.fixture(scope="module")
def exported(converted_default, tmp_path_factory):
    tmp = _shared(tmp_path_factory, "exp")
    paths = {}
    for fmt, name in (("torchscript", "model.ts.pt"), ("export", "model.pt2")):
        paths[fmt] = tmp / name
        if paths[fmt].exists():
            continue
        out = script("export_model.py", "--checkpoint", converted_default, "--format", fmt, "--output", tmp / name)
        assert out.returncode == 0, out.stderr
        assert "top-1 differs on 0" in out.stdout
    return paths
