"""Experiments in-process, with TorchServe's Context: an experiment archive of the default model and
a copy whose classifier rows are permuted (so agreement is known), built as build_mar builds it.
Shadow answers are the primary's, byte for byte; the pairs' agreement is what the two models give
offline; a candidate that raises or lags never changes an answer; a split assigns each key to
one arm, for good, near the share."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from ts.context import Context

from handlers.core.exchange import Item
from handlers.experiment.config import ExperimentConfig, takes_candidate
from handlers.experiment.pairing import Pairing, wilson_lower
from handlers.model.checkpoint import load_classifier, read_checkpoint
from handlers.model.recipe import normalize
from handlers.monitoring import Profile, channel_means
from handlers.request.pixels import image_pixels
from modeltools.save import save_checkpoint
from tests.conftest import ROOT
from tests.handler_harness import RecordedMetrics, run_batch

PHOTOS = sorted((ROOT / "samples").glob("*.jpg"))


def permuted_checkpoint(default_checkpoint, path: Path, version: str = "3.0") -> Path:
    state_dict, info = read_checkpoint(default_checkpoint)
    perm = torch.randperm(len(info.labels), generator=torch.Generator().manual_seed(0))
    shuffled = {k: (v[perm] if k.startswith("classifier.") else v) for k, v in state_dict.items()}
    save_checkpoint(path, shuffled, info.architecture, info.recipe, info.labels, version)
    return path


@pytest.fixture(scope="module")
def archive(default_checkpoint, tmp_path_factory) -> Path:
    """A shadow experiment archive, built as `build_mar.py --candidate` builds it."""
    tmp = tmp_path_factory.mktemp("experiment")
    candidate = permuted_checkpoint(default_checkpoint, tmp / "permuted.pt")
    # one backend, as the comparison handler's (the session's, torch float32): answers comparable byte for byte
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_mar.py"), "--checkpoint", str(default_checkpoint),
                    "--model-name", "m", "--export-path", str(tmp / "store"), "--candidate", str(candidate),
                    "--candidate-version", "3.0", "--experiment", "shadow", "--sample", "1.0", "--no-onnx",
                    "--set", "handler.backend=torch", "--set", "handler.precision=float32"],
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    (archive,) = (tmp / "store").glob("*.mar")
    assert archive.name == "m-v1.0-shadow-3.0.mar"  # named for its version: never the primary's m.mar
    return archive


def experiment_handler(archive: Path, folder: Path, **experiment):
    """The archive unpacked as TorchServe unpacks it and its handler initialised; `experiment`
    overrides its settings (a split is the same archive with mode: split in model-config.yaml)."""
    with zipfile.ZipFile(archive) as mar:
        mar.extractall(folder)
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
    config = yaml.safe_load((folder / "model-config.yaml").read_text())
    config["handler"]["experiment"].update(experiment)
    sys.path.insert(0, str(folder))
    from experiment_handler import ExperimentHandler  # the archive's own entry file

    sys.path.remove(str(folder))
    handler = ExperimentHandler()
    handler.initialize(Context("m", str(folder), manifest, 8, None, "0.12.0", model_yaml_config=config))
    return handler


@pytest.fixture(scope="module")
def shadow(archive, tmp_path_factory):
    return experiment_handler(archive, tmp_path_factory.mktemp("shadow"))


@pytest.fixture(scope="module")
def split(archive, tmp_path_factory):
    return experiment_handler(archive, tmp_path_factory.mktemp("split"), mode="split", share=0.5)


def offline_top1(checkpoint) -> list[str]:
    model, info = load_classifier(checkpoint, torch.device("cpu"))
    pixels = torch.stack([image_pixels(p.read_bytes(), 10**9, info.recipe) for p in PHOTOS])
    with torch.inference_mode():
        return [info.labels[i] for i in model(normalize(pixels, info.recipe)).argmax(1).tolist()]


def test_a_key_lands_in_one_arm_for_good_and_keys_split_near_the_share():
    keys = [f"user-{i}" for i in range(10_000)]
    arms = [takes_candidate(k, 0.3) for k in keys]
    assert arms == [takes_candidate(k, 0.3) for k in keys]  # stable
    salted = [takes_candidate(k, 0.3, "a1b2") for k in keys]  # another experiment: other users in its arm
    assert salted == [takes_candidate(k, 0.3, "a1b2") for k in keys] and salted != arms
    assert abs(np.mean(arms) - 0.3) < 0.02
    assert not any(takes_candidate(k, 0.0) for k in keys[:100]) and all(takes_candidate(k, 1.0) for k in keys[:100])


def test_wilson_lower_bound_and_pairing_by_label():
    assert wilson_lower(0, 0) == 0 and wilson_lower(95, 100) == pytest.approx(0.8882, abs=1e-3)
    pairing = Pairing(["a", "b", "c"], ["c", "a", "b"])  # the same classes, listed in another order
    assert pairing.summary()["top1_agreement_lower_95"] is None  # no pairs: no bound, not a bound of 0
    primary = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    candidate = torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.4, 0.1]])  # "a" then "c"
    pairing.record(primary, candidate, 0.01, 0.02)
    summary = pairing.summary()
    assert summary["pairs"] == 2 and summary["top1_agreement"] == 0.5
    assert summary["primary_top1_probability_change"] == pytest.approx(((0.6 - 0.7) + (0.1 - 0.8)) / 2)


def test_a_bad_experiment_setting_is_refused():
    with pytest.raises(ValueError, match="mode"):
        ExperimentConfig.from_dict(
            {"mode": "mirror", "candidate": "c/x.pt", "candidate_version": "2", "primary_version": "1"}
        )
    with pytest.raises(ValueError, match="sample"):
        ExperimentConfig.from_dict(
            {"mode": "shadow", "candidate": "candidate/c.pt", "candidate_version": "2", "primary_version": "1",
             "sample": 0}
        )  # fmt: skip
    for outside in ("../handlers/image_classifier.py", "candidate/../image_classifier.py", "/etc/passwd", "c.pt"):
        with pytest.raises(ValueError, match="must be a file under candidate/"):
            ExperimentConfig.from_dict(
                {"mode": "shadow", "candidate": outside, "candidate_version": "2", "primary_version": "1"}
            )


def test_a_candidate_archive_whose_files_leave_it_is_refused_and_trust_stays_its_own(archive, tmp_path):
    import io

    from modeltools.experiment_archive import combine, read_archive

    manifest, config, files = read_archive(archive)
    candidate_pt = config["handler"]["experiment"]["candidate"]  # the candidate's checkpoint in the archive
    bad = io.BytesIO()
    with zipfile.ZipFile(bad, "w") as z:
        model = {"modelName": "m", "modelVersion": "9.0", "serializedFile": "../handlers/image_classifier.py"}
        z.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": model}))
        z.writestr("model-config.yaml", "handler: {trust_program: true}\n")
        z.writestr("../handlers/image_classifier.py", "print('overwritten')")
    (tmp_path / "bad.mar").write_bytes(bad.getvalue())
    primary = tmp_path / "primary.mar"
    with zipfile.ZipFile(primary, "w") as z:  # the experiment archive's primary part, as an archive of its own
        for name, data in files.items():
            if not name.startswith("candidate/"):
                z.writestr(name, data)
    with pytest.raises(ValueError, match="is not a file of the archive"):
        combine(primary, tmp_path / "bad.mar", tmp_path / "out.mar", "shadow")
    trusted = tmp_path / "trusted.mar"
    with zipfile.ZipFile(trusted, "w") as z:
        model = {"modelName": "m", "modelVersion": "9.0", "serializedFile": "c.pt"}
        z.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": model}))
        z.writestr("model-config.yaml", "handler: {trust_program: true}\n")
        z.writestr("c.pt", files[candidate_pt])
    combine(primary, trusted, tmp_path / "both.mar", "split")
    _, combined, _ = read_archive(tmp_path / "both.mar")
    assert combined["handler"]["experiment"]["candidate_trust_program"] is True
    assert not combined["handler"].get("trust_program")  # the primary is not trusted with code
    salt = combined["handler"]["experiment"]["salt"]
    combine(primary, trusted, tmp_path / "again.mar", "split")
    assert len(salt) == 16 and read_archive(tmp_path / "again.mar")[1]["handler"]["experiment"]["salt"] != salt


def test_shadow_answers_are_the_primarys_and_agreement_is_what_the_models_give_offline(
    shadow, handler, default_checkpoint, tmp_path
):
    items = [{"body": p.read_bytes()} for p in PHOTOS]
    answers = run_batch(shadow, items)
    shadow.core.experiment.shadow.pending.result()  # the candidate's pass, done in its own thread
    primary_only = run_batch(handler, items)
    assert [json.dumps(a.body) for a in answers] == [json.dumps(a.body) for a in primary_only]
    assert {a.headers["x-model-version"] for a in answers} == {"1.0"}
    expected = (
        offline_top1(default_checkpoint),
        offline_top1(permuted_checkpoint(default_checkpoint, tmp_path / "p.pt")),
    )
    agree = sum(a == b for a, b in zip(*expected))
    summary = shadow.describe_handle()["experiment"]
    assert "share" not in summary and "key_header" not in summary and "requests" not in summary
    assert summary["pairs"] % len(PHOTOS) == 0 and summary["pairs"] >= len(PHOTOS)
    assert summary["top1_agreement"] == pytest.approx(agree / len(PHOTOS)) and agree < len(PHOTOS) / 2


def test_a_candidate_that_raises_or_lags_never_changes_an_answer(shadow, monkeypatch):
    items = [{"body": p.read_bytes()} for p in PHOTOS[:4]] + [{"body": b"not an image"}]
    before = run_batch(shadow, items)
    shadow.core.experiment.shadow.pending.result()
    dropped = dict(shadow.core.experiment.pairing.drops)
    monkeypatch.setattr(shadow.core.experiment.engine, "run", lambda pixels: 1 / 0)
    raised = run_batch(shadow, items)
    shadow.core.experiment.shadow.pending.result()
    assert shadow.core.experiment.pairing.drops["error"] == dropped.get("error", 0) + 1
    release = threading.Event()
    real = shadow.core.experiment.engine.__class__.run

    def lagging(pixels):
        release.wait(30)
        return real(shadow.core.experiment.engine, pixels)

    monkeypatch.setattr(shadow.core.experiment.engine, "run", lagging)
    first = run_batch(shadow, items)  # the candidate takes it and waits
    second = run_batch(shadow, items)  # answered while the candidate still works: its batch is dropped
    release.set()
    shadow.core.experiment.shadow.pending.result()
    assert shadow.core.experiment.pairing.drops["busy"] >= dropped.get("busy", 0) + 1
    for answers in (raised, first, second):
        assert [(a.status, json.dumps(a.body)) for a in answers] == [(a.status, json.dumps(b.body))
                                                                     for a, b in zip(before, before)]  # fmt: skip


def test_a_split_answers_each_key_from_one_arm_with_its_version(split):
    photo = PHOTOS[0].read_bytes()
    keys = [f"user-{i}" for i in range(16)]
    answers = run_batch(split, [{"body": photo}] * 16, headers=[{"X-User-Id": k} for k in keys])
    again = run_batch(split, [{"body": photo}] * 16, headers=[{"X-User-Id": k} for k in keys])
    versions = [a.headers["x-model-version"] for a in answers]
    assert versions == [a.headers["x-model-version"] for a in again]  # the same arm, every time
    assert versions == ["3.0" if takes_candidate(k, 0.5, split.core.experiment.config.salt) else "1.0" for k in keys]
    assert {"1.0", "3.0"} <= set(versions) and all(a.status == 200 for a in answers)
    labels = {v: {a.body[0]["label"] for a, ver in zip(answers, versions) if ver == v} for v in ("1.0", "3.0")}
    assert len(labels["1.0"]) == 1 and labels["1.0"] != labels["3.0"]  # the permuted candidate answers otherwise
    oip = {
        "inputs": [
            {
                "name": "image",
                "shape": [1],
                "datatype": "BYTES",
                "data": [__import__("base64").b64encode(photo).decode()],
            }
        ]
    }
    (answer,) = run_batch(split, [{"body": oip}], headers=[{"X-User-Id": keys[versions.index("3.0")]}])
    assert json.loads(answer.body)["model_version"] == "3.0"
    status = split.describe_handle()["experiment"]  # a split's own fields: answers per arm, no pairs
    assert status["mode"] == "split" and "pairs" not in status and "sample" not in status
    assert status["requests"]["candidate"]["ok"] >= versions.count("3.0") * 2 + 1
    assert status["requests"]["primary"]["ok"] >= versions.count("1.0") * 2
    assert 0 < status["confidence"]["primary"] <= 1 and 0 < status["confidence"]["candidate"] <= 1


def test_a_failing_shadow_leaves_the_primarys_error_counters_unchanged(shadow, monkeypatch):
    """The shadow's faults are drops of its own: neither its pass nor its own decoding is counted
    as the primary's internal error or a server_error answer."""
    core, metrics = shadow.core, RecordedMetrics()
    monkeypatch.setattr(core, "metrics", metrics)
    items = [Item(p.read_bytes()) for p in PHOTOS[:4]]
    dropped = core.experiment.pairing.drops["error"]
    monkeypatch.setattr(core.experiment.engine, "run", lambda pixels: 1 / 0)
    assert [a.status for a in core.handle(items)] == [200] * 4
    core.experiment.shadow.pending.result()
    monkeypatch.setattr(core.experiment.shadow, "decode", lambda images: [core.decode(i, quiet=True) for i in images])
    monkeypatch.setattr("handlers.core.classifier.image_pixels", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # the shadow's own decoding raises, to be counted as its drop
        core.decode(PHOTOS[0].read_bytes(), quiet=True)
    monkeypatch.undo()
    monkeypatch.setattr(core, "metrics", metrics)
    failing = lambda images: [core.decode(i, quiet=True) for i in images] and 1 / 0  # noqa: E731
    monkeypatch.setattr(core.experiment.shadow, "decode", failing)
    assert [a.status for a in core.handle(items)] == [200] * 4
    core.experiment.shadow.pending.result()
    assert core.experiment.pairing.drops["error"] == dropped + 2
    assert metrics.total("image_classifier_internal_errors_total") == 0
    assert metrics.total("image_classifier_requests_total", "plain", "server_error") == 0
    assert metrics.total("image_classifier_requests_total", "plain", "ok") == 8


def test_drift_gauges_move_with_traffic_in_a_split(split, monkeypatch):
    """A split takes the core's one path: its inputs and answers reach the monitor and the drift
    gauges, the stage metrics are written, each arm's requests and time are counted."""
    core, metrics = split.core, RecordedMetrics()
    monkeypatch.setattr(core, "metrics", metrics)
    photos = [p.read_bytes() for p in PHOTOS]
    pixels = torch.stack([core.decode(p) for p in photos])
    ref = core.monitor.profile
    monkeypatch.setattr(core.monitor, "profile", Profile(np.repeat(channel_means(pixels, core.info.recipe.mean,
                        core.info.recipe.std), 20, 0), np.full(20 * len(photos), 0.6)))  # fmt: skip
    assert ref is None or not ref.usable  # the test archive's own profile is too small to carry a signal
    keys = [f"user-{i}" for i in range(24)]
    answers = core.handle([Item(photos[i % len(photos)], {"x-user-id": k}) for i, k in enumerate(keys)])
    assert all(a.status == 200 for a in answers) and {a.version for a in answers} == {"1.0", "3.0"}
    core.reporter.report()
    psi_same = metrics.last("image_classifier_input_drift_psi")
    assert psi_same is not None and metrics.last("image_classifier_confidence_drift_ks") is not None
    dark = [_darkened(p) for p in photos]
    core.handle([Item(dark[i % len(dark)], {"x-user-id": k}) for i, k in enumerate(keys * 20)])
    core.reporter.report()
    assert metrics.last("image_classifier_input_drift_psi") > max(0.25, psi_same)
    stages = {labels[0] for n, _, labels in metrics.events if n == "image_classifier_stage_seconds"}
    assert stages == {"decode", "inference", "answer"}
    arms = {labels[0] for n, _, labels in metrics.events if n == "image_classifier_arm_requests_total"}
    assert arms == {"primary", "candidate"}


def _darkened(photo: bytes) -> bytes:
    from io import BytesIO

    from PIL import Image

    out = BytesIO()
    Image.open(BytesIO(photo)).convert("RGB").point(lambda v: v // 4).save(out, "JPEG")
    return out.getvalue()
