"""Bring your own model: training checkpoints converted, programs exported and served in-process."""

from __future__ import annotations

import json
import sys
import zipfile

import pytest
import torch
import yaml

from handlers.model.checkpoint import build_architecture, read_checkpoint
from handlers.model.programs import detect_format
from handlers.model.recipe import Recipe
from modeltools.convert import extract_state_dict, load_training_checkpoint, read_labels, recipe_for, strip_prefixes
from tests.byom_fixtures import script
from tests.conftest import labelled_photos
from tests.handler_harness import load_handler, run_batch


@pytest.mark.parametrize("layout", ["bare", "model_state_dict", "state_dict", "model"])
@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "module._orig_mod."])
def test_training_layouts_and_prefixes(layout, prefix):
    sd = build_architecture("torchvision:resnet18", 4).state_dict()
    wrapped = {prefix + k: v for k, v in sd.items()}
    obj = wrapped if layout == "bare" else {layout: wrapped, "optimizer": {"lr": 0.1}, "epoch": 3}
    out = strip_prefixes(extract_state_dict(obj), sd.keys())
    assert out.keys() == sd.keys()


def test_labels_from_index_to_name_list_and_text(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"1": ["n1", "dog"], "0": ["n0", "cat"]}))
    (tmp_path / "b.json").write_text(json.dumps(["cat", "dog"]))
    (tmp_path / "c.txt").write_text("cat\ndog\n")
    assert (
        read_labels(tmp_path / "a.json")
        == read_labels(tmp_path / "b.json")
        == read_labels(tmp_path / "c.txt")
        == ["cat", "dog"]
    )
    (tmp_path / "gap.json").write_text(json.dumps({"0": "cat", "2": "dog"}))
    with pytest.raises(ValueError, match="without gaps"):
        read_labels(tmp_path / "gap.json")


def test_recipe_from_timm_or_refused():
    assert recipe_for("timm:tf_efficientnet_lite0", None).mean == (0.5, 0.5, 0.5)
    assert recipe_for("torchvision:resnet18", {"crop_size": 64, "resize_size": 72}) == Recipe(64, 72)
    with pytest.raises(ValueError, match="no preprocessing recipe"):
        recipe_for("torchvision:resnet18", None)


def test_arbitrary_pickles_are_refused_unless_opted_in(tmp_path):
    path = tmp_path / "full_model.pt"
    torch.save(build_architecture("torchvision:resnet18", 2), path)  # a pickled nn.Module
    with pytest.raises(ValueError, match="arbitrary unpickling"):
        load_training_checkpoint(path)
    assert isinstance(load_training_checkpoint(path, allow_unsafe=True), torch.nn.Module)


@pytest.mark.slow
def test_convert_command_validates_and_refuses_mismatches(tmp_path):
    sd = build_architecture("torchvision:resnet18", 3).state_dict()
    torch.save(
        {"model_state_dict": {"module." + k: v for k, v in sd.items()}, "optimizer_state_dict": {}},
        tmp_path / "train.ckpt",
    )
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    recipe = json.dumps({"crop_size": 64, "resize_size": 72})
    ok = script(
        "convert_checkpoint.py",
        "--input",
        tmp_path / "train.ckpt",
        "--architecture",
        "torchvision:resnet18",
        "--labels",
        tmp_path / "labels.txt",
        "--recipe",
        recipe,
        "--output",
        tmp_path / "m.pt",
    )
    assert ok.returncode == 0, ok.stderr
    _, info = read_checkpoint(tmp_path / "m.pt")
    assert info.labels == ("a", "b", "c") and info.recipe.crop_size == 64
    (tmp_path / "five.txt").write_text("a\nb\nc\nd\ne\n")
    bad = script(
        "convert_checkpoint.py",
        "--input",
        tmp_path / "train.ckpt",
        "--architecture",
        "torchvision:resnet18",
        "--labels",
        tmp_path / "five.txt",
        "--recipe",
        recipe,
        "--output",
        tmp_path / "bad.pt",
    )
    assert bad.returncode == 2 and "fc.weight" in bad.stderr
    assert str(tmp_path / "train.ckpt") in bad.stderr and "5 labels" in bad.stderr  # named for the input
    assert not (tmp_path / "bad.pt").exists() and not list(tmp_path.glob(".*partial"))  # nothing written
    labels = tmp_path / "labels.txt"
    missing = script("convert_checkpoint.py", "--input", tmp_path / "nope.ckpt", "--architecture",
                     "torchvision:resnet18", "--labels", labels, "--output", tmp_path / "y.pt")  # fmt: skip
    assert (
        missing.returncode == 2 and "nope.ckpt: no such file" in missing.stderr and "unpickling" not in missing.stderr
    )
    typo = script("convert_checkpoint.py", "--input", tmp_path / "train.ckpt", "--architecture", "torchvision:resnt18",
                  "--labels", tmp_path / "labels.txt", "--output", tmp_path / "z.pt")  # fmt: skip
    assert (
        typo.returncode == 2 and "did you mean torchvision:resnet18" in typo.stderr and not (tmp_path / "z.pt").exists()
    )
    unknown = script(
        "convert_checkpoint.py",
        "--input",
        tmp_path / "train.ckpt",
        "--architecture",
        "timm:nope_net",
        "--labels",
        tmp_path / "labels.txt",
        "--output",
        tmp_path / "x.pt",
    )
    assert unknown.returncode == 2 and "unknown" in unknown.stderr


def test_formats_are_detected(converted_default, exported):
    assert detect_format(converted_default) == "checkpoint"
    assert detect_format(exported["torchscript"]) == "torchscript"
    assert detect_format(exported["export"]) == "export"


@pytest.mark.parametrize("fmt", ["checkpoint", "torchscript", "export"])
def test_default_weights_through_each_path_classify_the_photos(fmt, converted_default, exported, photos, tmp_path):
    path = converted_default if fmt == "checkpoint" else exported[fmt]
    handler = load_handler(path, tmp_path, config={"handler": {"trust_program": fmt != "checkpoint"}})
    assert handler.describe_handle()["unsafe_source"] is (fmt != "checkpoint")
    # torch.export graphs carry runtime shape assertions, which tracing refuses: served eagerly
    assert handler.engine.graph.kind == ("eager" if fmt == "export" else "frozen"), handler.engine.graph.note
    names = [n for n, ok in labelled_photos().items() if ok]
    for name, answer in zip(names, run_batch(handler, [{"body": photos[n]} for n in names])):
        assert answer.body[0]["label"] in labelled_photos()[name], (fmt, name, answer.body[0])


@pytest.mark.parametrize("fmt", ["torchscript", "export"])
@pytest.mark.slow
def test_programs_are_code_and_load_only_when_trusted(fmt, exported, tmp_path):
    with pytest.raises(ValueError, match="runs code from the file.*--trust-program"):
        load_handler(exported[fmt], tmp_path)
    refused = script(
        "build_mar.py", "--no-onnx", "--checkpoint", exported[fmt], "--model-name", "p", "--export-path", tmp_path / "s"
    )
    assert refused.returncode == 2 and "--trust-program" in refused.stderr and not (tmp_path / "s").exists()
    trusted = script(
        "build_mar.py",
        "--no-onnx",
        "--checkpoint",
        exported[fmt],
        "--model-name",
        "p",
        "--export-path",
        tmp_path / "s",
        "--trust-program",
    )
    assert trusted.returncode == 0 and "unsafe_source is recorded" in trusted.stdout, trusted.stderr
    with zipfile.ZipFile(tmp_path / "s" / "p.mar") as mar:
        assert yaml.safe_load(mar.read("model-config.yaml"))["handler"]["trust_program"] is True


def test_export_writes_nothing_when_verification_fails(default_checkpoint, tmp_path):
    out = script(
        "export_model.py",
        "--checkpoint",
        default_checkpoint,
        "--format",
        "torchscript",
        "--output",
        tmp_path / "m.ts.pt",
        "--tolerance",
        "-1",
    )
    assert out.returncode == 2 and "does not match" in out.stderr
    assert list(tmp_path.iterdir()) == []


MODEL_FILE = """import torch


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.features(x))
"""


def tiny_eager(tmp_path):
    (tmp_path / "tiny_net.py").write_text(MODEL_FILE)
    sys.path.insert(0, str(tmp_path))
    import importlib

    net = importlib.import_module("tiny_net").TinyNet()
    torch.save(net.state_dict(), tmp_path / "weights.pth")
    (tmp_path / "index_to_name.json").write_text(json.dumps({"0": "red", "1": "green", "2": "blue"}))
    return net


def test_eager_model_file_convention_is_archived_and_served(tmp_path, photos):
    tiny_eager(tmp_path)
    out = script(
        "build_mar.py",
        "--no-onnx",
        "--checkpoint",
        tmp_path / "weights.pth",
        "--model-file",
        tmp_path / "tiny_net.py",
        "--labels",
        tmp_path / "index_to_name.json",
        "--recipe",
        '{"crop_size": 32, "resize_size": 36}',
        "--model-name",
        "tiny",
        "--export-path",
        tmp_path / "store",
    )
    assert out.returncode == 0, out.stderr
    import zipfile

    with zipfile.ZipFile(tmp_path / "store" / "tiny.mar") as mar:
        assert {"tiny_net.py", "tiny.pt", "handlers/model/checkpoint.py"} <= set(mar.namelist())
        mar.extractall(tmp_path / "unpacked")
    handler = load_handler(tmp_path / "unpacked" / "tiny.pt", tmp_path / "unpacked")
    answer = run_batch(handler, [{"body": photos["dog1.jpg"]}])[0]
    assert answer.status == 200 and {a["label"] for a in answer.body} == {"red", "green", "blue"}


def test_eager_model_file_needs_labels_and_recipe(tmp_path):
    tiny_eager(tmp_path)
    out = script(
        "build_mar.py",
        "--no-onnx",
        "--checkpoint",
        tmp_path / "weights.pth",
        "--model-file",
        tmp_path / "tiny_net.py",
        "--labels",
        tmp_path / "index_to_name.json",
        "--model-name",
        "tiny",
        "--export-path",
        tmp_path / "s",
    )
    assert out.returncode == 2 and "--recipe" in out.stderr


def test_int8_linear_quantization_keeps_top1_on_the_photos(default_checkpoint, handler, tmp_path, photos):
    names = [n for n, ok in labelled_photos().items() if ok]
    plain = handler
    quant = load_handler(default_checkpoint, tmp_path / "b", config={"handler": {"quantize_int8": True}})
    assert quant.describe_handle()["int8_linear"] is True
    assert quant.engine.graph.kind == "frozen", quant.engine.graph.note  # dynamic int8 Linear traces and freezes
    items = [{"body": photos[n]} for n in names]
    for p, q in zip(run_batch(plain, items), run_batch(quant, items)):
        assert p.body[0]["label"] == q.body[0]["label"]
        assert abs(p.body[0]["probability"] - q.body[0]["probability"]) < 0.05


@pytest.mark.slow
def test_unsafe_opt_in_is_recorded(tmp_path):
    model = build_architecture("torchvision:resnet18", 2)
    torch.save(model, tmp_path / "pickled.pt")
    (tmp_path / "labels.txt").write_text("a\nb\n")
    args = [
        "--input",
        tmp_path / "pickled.pt",
        "--architecture",
        "torchvision:resnet18",
        "--labels",
        tmp_path / "labels.txt",
        "--recipe",
        '{"crop_size": 32, "resize_size": 36}',
        "--output",
        tmp_path / "m.pt",
    ]
    refused = script("convert_checkpoint.py", *args)
    assert refused.returncode == 2 and "arbitrary unpickling" in refused.stderr
    allowed = script("convert_checkpoint.py", *args, "--allow-unsafe-pickle")
    assert allowed.returncode == 0, allowed.stderr
    assert read_checkpoint(tmp_path / "m.pt")[1].unsafe_source is True
    archived = script(
        "build_mar.py",
        "--no-onnx",
        "--checkpoint",
        tmp_path / "m.pt",
        "--model-name",
        "m",
        "--export-path",
        tmp_path / "s",
    )
    assert archived.returncode == 0 and "unsafe_source is recorded" in archived.stdout
