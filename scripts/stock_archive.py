#!/usr/bin/env python
"""Archive a checkpoint for TorchServe's stock `image_classifier` handler, for side-by-side benchmarks.

The stock handler wants an eager model file with one class, a bare state dict and
index_to_name.json; it preprocesses with ImageNet's mean/std (Resize 256, CenterCrop 224).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from handlers.model.checkpoint import read_checkpoint  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
from build_mar import run_archiver  # noqa: E402

MODEL_FILE = """import timm
import torch


class StockBenchModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = timm.create_model({arch!r}, pretrained=False, num_classes={num_classes})

    def forward(self, x):
        return self.net(x)
"""


def build_stock_mar(checkpoint: Path, name: str, export: Path, batch_size: int, max_batch_delay: int) -> Path:
    state_dict, info = read_checkpoint(checkpoint)
    source, _, arch = info.architecture.rpartition(":")
    if source not in ("", "timm"):
        raise ValueError("the stock comparison archive supports timm architectures only")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "model.py").write_text(MODEL_FILE.format(arch=arch, num_classes=len(info.labels)))
        torch.save({f"net.{k}": v for k, v in state_dict.items()}, tmp / "weights.pth")
        (tmp / "index_to_name.json").write_text(json.dumps({str(i): label for i, label in enumerate(info.labels)}))
        (tmp / "model-config.yaml").write_text(
            yaml.safe_dump({"batchSize": batch_size, "maxBatchDelay": max_batch_delay})
        )
        run_archiver(
            "--model-name",
            name,
            "--version",
            "1.0",
            "--model-file",
            str(tmp / "model.py"),
            "--serialized-file",
            str(tmp / "weights.pth"),
            "--handler",
            "image_classifier",
            "--extra-files",
            str(tmp / "index_to_name.json"),
            "--config-file",
            str(tmp / "model-config.yaml"),
            "--export-path",
            str(export),
            "--force",
        )
    return export / f"{name}.mar"
