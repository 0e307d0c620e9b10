"""scripts/build_mar.py: validation before writing, and what goes into the archive."""

import json
import subprocess
import sys
import zipfile

import yaml

from handlers.model.checkpoint import build_architecture
from handlers.model.recipe import Recipe
from modeltools.save import save_checkpoint
from tests.conftest import ROOT


def build(tmp_path, checkpoint, *extra):
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "build_mar.py"),
            "--checkpoint",
            str(checkpoint),
            "--model-name",
            "tiny",
            "--version",
            "2.0",
            "--export-path",
            str(tmp_path / "store"),
            "--no-onnx",
            *extra,
        ],
        capture_output=True,
        text=True,
    )


def tiny_checkpoint(path, labels=3):
    model = build_architecture("torchvision:resnet18", num_classes=3)
    save_checkpoint(
        path, model.state_dict(), "torchvision:resnet18", Recipe(64, 72), [str(i) for i in range(labels)], "2.0"
    )
    return path


def test_archive_is_self_contained(tmp_path):
    out = build(tmp_path, tiny_checkpoint(tmp_path / "tiny.pt"), "--set", "batchSize=4", "--set", "handler.topk=2")
    assert out.returncode == 0, out.stderr
    with zipfile.ZipFile(tmp_path / "store" / "tiny.mar") as mar:
        names = set(mar.namelist())
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
        config = yaml.safe_load(mar.read("model-config.yaml"))
    assert {
        "image_classifier.py",
        "tiny.pt",
        "handlers/__init__.py",
        "handlers/request/pixels.py",
        "handlers/model/engine.py",
        "handlers/model/checkpoint.py",
        "reference.pt",  # the photos every backend is verified on; no model.onnx with --no-onnx
    } <= names and "model.onnx" not in names
    assert not any("__pycache__" in n or n.startswith("modeltools/") for n in names)  # offline tools stay out
    assert manifest["model"]["modelVersion"] == "2.0" and manifest["model"]["handler"] == "image_classifier.py"
    assert config["batchSize"] == 4 and config["handler"]["topk"] == 2


def test_the_archive_version_is_the_one_announced_and_the_checkpoints_is_named_apart(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")  # saved as 2.0
    out = build(tmp_path, ckpt, "--version", "3.0")
    assert out.returncode == 0, out.stderr
    assert "version 3.0 (the checkpoint's own version: 2.0)" in out.stdout
    with zipfile.ZipFile(tmp_path / "store" / "tiny.mar") as mar:
        assert json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]["modelVersion"] == "3.0"


def test_mismatched_labels_fail_at_archive_time(tmp_path):
    out = build(tmp_path, tiny_checkpoint(tmp_path / "tiny.pt", labels=5))
    assert out.returncode == 2 and "has 5 labels, but its classifier (fc.weight) has 3 outputs" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1  # one line, not torch's dump
    assert not (tmp_path / "store" / "tiny.mar").exists()


def test_unknown_handler_setting_fails_at_archive_time(tmp_path):
    out = build(tmp_path, tiny_checkpoint(tmp_path / "tiny.pt"), "--set", "handler.topK=3")
    assert out.returncode == 2 and "unknown handler settings" in out.stderr


def test_the_archive_carries_its_reference_photos_and_a_verified_onnx_file(served_archive):
    import onnxruntime
    import torch

    from handlers.model.reference import ReferenceSet

    reference = ReferenceSet.load(served_archive / "reference.pt")
    assert reference.names == tuple(sorted(p.name for p in (ROOT / "samples").glob("*.jpg")))
    assert reference.pixels.shape == (8, 3, 224, 224) and reference.pixels.dtype == torch.uint8
    session = onnxruntime.InferenceSession(str(served_archive / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"pixels": reference.pixels.numpy()})  # uint8 in: the recipe is inside
    assert torch.equal(torch.from_numpy(logits).argmax(1), reference.logits.argmax(1))
    labels = [read_info_labels(served_archive)[i] for i in reference.logits.argmax(1)]
    assert labels[reference.names.index("dog1.jpg")] == "Labrador retriever"


def read_info_labels(archive):
    from handlers.model.checkpoint import read_info

    return read_info(archive / "efficientnet_lite0.pt").labels
