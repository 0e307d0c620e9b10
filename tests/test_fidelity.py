"""The default serves the library's float32 answers: on photos the archive never saw (crops of
unusual aspect ratio and size cut from the test photos, large ones included, where DCT-scaled
JPEG decoding would change pixels), in every crop mode, the default archive's engine on the
default pixel path gives timm's eval transform + the float32 model's top-1, each probability
within 0.005. Reduced precision serves only as the archive's verification record allows."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import zipfile

import pytest
import torch
from PIL import Image
from timm.data.transforms_factory import transforms_imagenet_eval

from handlers.model.checkpoint import load_classifier, read_info
from handlers.model.engine import EngineOptions
from handlers.model.recipe import Recipe
from handlers.model.reference import FILE, ReferenceSet
from handlers.model.selection import choose_engine
from handlers.model.verification import VerificationRecord
from handlers.request.pixels import image_pixels
from handlers.settings import Settings
from modeltools.crops import jpeg, open_photos, random_crops
from tests.conftest import IMAGES, ROOT
from tests.handler_harness import make_context, run_batch

CPU = torch.device("cpu")
UNSEEN = 96


def unseen_crops(count: int = UNSEEN, seed: int = 0) -> list[bytes]:
    """JPEGs cut from the test photos (modeltools/crops.py): aspect ratios 1:3 to 3:1, 30-100% of
    the photo, mirrored at random, scaled 0.5x to 2x (so some are far larger than the model's input)."""
    return [jpeg(c) for c in random_crops(open_photos(sorted(IMAGES.glob("*.jpg"))), count, seed, rescale=True)]


@pytest.fixture(scope="module")
def crops() -> list[bytes]:
    return unseen_crops()


@pytest.fixture(scope="module")
def model(served_archive):
    return load_classifier(_artifact(served_archive), CPU)


def _artifact(archive):
    return next(p for p in archive.glob("*.pt") if p.name != FILE)


def timm_probabilities(model, recipe: Recipe, crops: list[bytes]) -> torch.Tensor:
    transform = transforms_imagenet_eval(
        img_size=recipe.crop_size, crop_pct=recipe.crop_size / recipe.resize_size, crop_mode=recipe.crop_mode,
        interpolation=recipe.interpolation, mean=recipe.mean, std=recipe.std,
    )  # fmt: skip
    batch = torch.stack([transform(Image.open(io.BytesIO(c)).convert("RGB")) for c in crops])
    with torch.inference_mode():
        return model(batch).softmax(1)


@pytest.mark.parametrize("mode", ["center", "squash", "border"])
def test_the_default_serves_timms_float32_answers_in_every_crop_mode(served_archive, model, crops, mode, tmp_path):
    eager, info = model
    recipe = Recipe.from_dict({**info.recipe.to_dict(), "crop_mode": mode})
    expected = timm_probabilities(eager, recipe, crops)
    settings = Settings.from_model_yaml({})
    engine, selection = choose_engine(
        recipe, CPU, 8, settings.engine_options(), lambda: load_classifier(_artifact(served_archive), CPU)[0],
        served_archive / "model.onnx", ReferenceSet.load(served_archive / FILE), tmp_path / "cache",
    )  # fmt: skip
    assert selection.chosen.endswith("/float32") and all(label.endswith("/float32") for label in selection.measured)
    pixels = torch.stack([image_pixels(c, 10**9, recipe, settings.fast_pixels) for c in crops])
    served = engine.run(pixels).logits.softmax(1)
    top = expected.argmax(1, keepdim=True)
    assert torch.equal(served.argmax(1), expected.argmax(1)), selection.chosen
    assert (served.gather(1, top) - expected.gather(1, top)).abs().max() <= 0.005, selection.chosen


def test_the_default_handler_answers_as_timm_does(handler, model, crops):
    eager, info = model
    expected = timm_probabilities(eager, info.recipe, crops[:16])
    answers = run_batch(handler, [{"body": c} for c in crops[:8]]) + run_batch(
        handler, [{"body": c} for c in crops[8:16]]
    )
    labels = [info.labels[i] for i in expected.argmax(1)]
    for answer, label, p in zip(answers, labels, expected.max(1).values):
        assert answer.status == 200 and answer.body[0]["label"] == label
        assert abs(answer.body[0]["probability"] - float(p)) <= 0.005
    health = handler.describe_handle()
    assert health["precision"] == "float32" and health["pixels"] == "exact"
    window = health["monitoring"]["window"]  # plain values: labels, not class indices; 3 decimals
    assert window["top_classes"] and all(
        c["label"] in info.labels and 0 < c["share"] <= 1 for c in window["top_classes"]
    )
    assert all(len(repr(m).split(".")[-1]) <= 3 for m in window["channel_means"])


def _choose(archive, tmp_path, record=None, **options):
    artifact = _artifact(archive)
    return choose_engine(
        read_info(artifact).recipe, CPU, 8, EngineOptions(**options), lambda: load_classifier(artifact, CPU)[0],
        archive / "model.onnx", ReferenceSet.load(archive / FILE), tmp_path, record=record,
    )  # fmt: skip


def _record(passed: dict) -> VerificationRecord:
    entry = {"images": 300, "top1_agree": 297, "top1_agreement": 0.99, "top1_agreement_lower_95": 0.971,
             "max_top1_prob_change": 0.05, "mean_top1_prob_change": 0.004}  # fmt: skip
    return VerificationRecord(300, 0.99, "exact", {label: {**entry, "passed": ok} for label, ok in passed.items()})


def test_a_reduced_precision_needs_the_archives_evidence(served_archive, tmp_path):
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no bfloat16 instructions")
    with pytest.raises(ValueError, match="no verification record"):
        _choose(served_archive, tmp_path / "a", precision="bfloat16")
    with pytest.raises(ValueError, match="below min_agreement"):
        _choose(served_archive, tmp_path / "b", _record({"torch/bfloat16": False}), precision="bfloat16",
                backend="torch")  # fmt: skip
    engine, selection = _choose(served_archive, tmp_path / "c", _record({"torch/bfloat16": True}), precision="bfloat16")
    assert selection.chosen == "torch/bfloat16" and engine.backend.precision == "bfloat16"
    assert selection.to_dict()["verification"]["top1_agreement"] == 0.99
    assert "not measured" in " ".join(selection.unavailable.values())  # openvino/bfloat16 had no measure


@pytest.fixture(scope="module")
def verify_folder(crops, tmp_path_factory):
    folder = tmp_path_factory.mktemp("verify")
    for i, crop in enumerate(crops):
        (folder / ("cats" if i % 2 else "dogs")).mkdir(exist_ok=True)
        (folder / ("cats" if i % 2 else "dogs") / f"{i:03d}.jpg").write_bytes(crop)
    return folder


def _build(default_checkpoint, store, name, verify, *settings):
    cmd = [sys.executable, str(ROOT / "scripts" / "build_mar.py"), "--checkpoint", str(default_checkpoint),
           "--model-name", name, "--export-path", str(store), "--verify-images", str(verify)]  # fmt: skip
    for item in settings:
        cmd += ["--set", item]
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.mark.slow
def test_int8_is_quantized_measured_and_refused_below_min_agreement(default_checkpoint, verify_folder, tmp_path):
    pytest.importorskip("onnxruntime")
    done = _build(default_checkpoint, tmp_path, "strict", verify_folder, "handler.precision=int8",
                  "handler.min_agreement=1.0")  # fmt: skip
    assert done.returncode == 2 and not (tmp_path / "strict.mar").exists()
    assert "precision int8 keeps the float32 answers on fewer than min_agreement 1.0 of 96" in done.stderr
    assert "onnxruntime/int8: top-1 agreement 0." in done.stderr and "Wilson 95% lower bound" in done.stderr
    done = _build(default_checkpoint, tmp_path, "loose", verify_folder, "handler.precision=int8",
                  "handler.min_agreement=0.5")  # fmt: skip
    assert done.returncode == 0, done.stderr
    with zipfile.ZipFile(tmp_path / "loose.mar") as mar:
        names = set(mar.namelist())
        record = VerificationRecord(**__import__("json").loads(mar.read("verification.json")))
    assert {"model.int8.onnx", "verification.json", "model.onnx"} <= names
    assert record.images == UNSEEN and record.int8["calibration_images"] == 96
    assert any(record.passed(label) for label in ("onnxruntime/int8", "openvino/int8"))
    for entry in record.candidates.values():
        assert 0.5 <= entry["top1_agreement"] < 1.0 and entry["top1_agreement_lower_95"] < entry["top1_agreement"]


def test_an_archive_asking_for_bfloat16_serves_it_with_its_evidence_in_health(default_checkpoint, verify_folder,
                                                                               tmp_path):  # fmt: skip
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no bfloat16 instructions")
    done = _build(
        default_checkpoint, tmp_path, "bf16", default_checkpoint.parent / "missing", "handler.precision=bfloat16"
    )
    assert done.returncode == 2 and "is not a folder of photos" in done.stderr
    done = _build(default_checkpoint, tmp_path, "bf16", verify_folder, "handler.precision=bfloat16",
                  "handler.min_agreement=0.8")  # fmt: skip
    assert done.returncode == 0, done.stderr
    model_dir = tmp_path / "model"
    with zipfile.ZipFile(tmp_path / "bf16.mar") as mar:
        mar.extractall(model_dir)
    import yaml

    from handlers.image_classifier import ImageClassifier

    handler = ImageClassifier()
    config = yaml.safe_load((model_dir / "model-config.yaml").read_text())
    handler.initialize(make_context(model_dir, _artifact(model_dir).name, config))
    health = handler.describe_handle()
    assert health["precision"] == "bfloat16"
    evidence = health["engine_selection"]["verification"]
    assert evidence["verification_images"] == UNSEEN and evidence["min_agreement"] == 0.8 and evidence["passed"]
    assert 0.8 <= evidence["top1_agreement"] <= 1.0
    shutil.rmtree(model_dir)


def test_reduced_precision_without_a_verification_set_is_refused_at_archive_time(default_checkpoint, tmp_path):
    cmd = [sys.executable, str(ROOT / "scripts" / "build_mar.py"), "--checkpoint", str(default_checkpoint),
           "--model-name", "x", "--export-path", str(tmp_path), "--set", "handler.pixels=fast"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 2 and "give --verify-images DIR" in done.stderr and not list(tmp_path.glob("*.mar"))
