"""The window of what the model is fed and how sure it is, against the archive's reference
profile: the same photos drift nowhere, swapped channels and darkness move the input score past
its alert, a collapse of confidence moves the confidence score; scores need a full-enough window."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch
from PIL import Image

from handlers.model.checkpoint import load_classifier
from handlers.model.recipe import normalize
from handlers.model.reference import FILE, ReferenceSet
from handlers.monitoring import MIN_WINDOW, REPORT_SAMPLE, Monitor, Profile, Reporter, answer_stats, ks, psi
from handlers.request.pixels import image_pixels
from tests.conftest import ROOT

PHOTOS = sorted((ROOT / "samples").glob("*.jpg"))


@pytest.fixture(scope="module")
def model_and_recipe(default_checkpoint):
    model, info = load_classifier(default_checkpoint, torch.device("cpu"))
    return model, info.recipe


def served(recipe, transform=None) -> torch.Tensor:
    out = []
    for path in PHOTOS:
        img = Image.open(path).convert("RGB")
        img = transform(img) if transform else img
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=92)
        out.append(image_pixels(buf.getvalue(), 10**9, recipe))
    return torch.stack(out)


def feed(monitor: Monitor, model, recipe, pixels: torch.Tensor, times: int = 3) -> dict:
    with torch.inference_mode():
        probs = torch.softmax(model(normalize(pixels, recipe)), 1)
    for _ in range(times):
        monitor.add_inputs(pixels)
        monitor.add_answers(probs)
    return monitor.scores()


def test_psi_and_ks_are_zero_for_the_same_sample_and_grow_with_a_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 0.3, 400)
    assert psi(a, a) == 0 and ks(a, a) == 0
    assert psi(a, a + 0.5) > 0.25 and ks(a, a + 0.5) > 0.5
    assert psi(a, rng.normal(0, 0.3, 400)) < 0.25  # another sample of the same distribution


def test_answer_stats_are_top1_margin_and_entropy():
    probs = torch.tensor([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3]])
    stats = answer_stats(probs)
    assert stats["classes"].tolist() == [0, 0] and np.allclose(stats["top1"], [0.7, 1 / 3])
    assert np.allclose(stats["margin"], [0.5, 0.0], atol=1e-6) and np.isclose(stats["entropy"][1], np.log(3))


@pytest.mark.parametrize(
    "name, transform, drifts",
    [
        ("the reference photos", None, False),
        ("channels swapped (BGR sent for RGB)", lambda img: Image.merge("RGB", img.split()[::-1]), True),
        ("darkened to 30%", lambda img: img.point(lambda v: int(v * 0.3)), True),
    ],
)
def test_input_drift_against_the_archives_profile(served_archive, model_and_recipe, name, transform, drifts):
    model, recipe = model_and_recipe
    reference = ReferenceSet.load(served_archive / FILE)
    monitor = Monitor(Profile.of(reference, recipe.mean, recipe.std), recipe.mean, recipe.std)
    scores = feed(monitor, model, recipe, served(recipe, transform))
    assert (scores["input_drift_psi"] > 0.25) is drifts, (name, scores)
    assert scores["reference_confidence"] == pytest.approx(float(reference.profile_top1.mean()))
    if not drifts:
        assert scores["input_drift_psi"] == pytest.approx(0, abs=0.05) and scores["confidence_drift_ks"] < 0.2


def test_a_collapse_of_confidence_moves_the_ks_score_and_the_mean(served_archive, model_and_recipe):
    model, recipe = model_and_recipe
    monitor = Monitor(Profile.of(ReferenceSet.load(served_archive / FILE), recipe.mean, recipe.std), recipe.mean,
                      recipe.std)  # fmt: skip
    noise = torch.randint(
        0, 256, (len(PHOTOS), 3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    scores = feed(monitor, model, recipe, noise)
    assert scores["confidence_drift_ks"] > 0.3 and scores["mean_confidence"] < 0.75 * scores["reference_confidence"]


def test_no_score_before_the_window_holds_enough(model_and_recipe):
    model, recipe = model_and_recipe
    profile = Profile(np.zeros((8, 3), np.float32), np.full(8, 0.5, np.float32))
    monitor = Monitor(profile, recipe.mean, recipe.std)
    pixels = served(recipe)[:2]
    scores = feed(monitor, model, recipe, pixels, times=1)
    assert scores["input_drift_psi"] is None and scores["confidence_drift_ks"] is None and MIN_WINDOW > 2
    assert Monitor(None, recipe.mean, recipe.std).scores()["input_drift_psi"] is None


class Recorded:
    """What a Reporter reported (HandlerMetrics' two calls it makes); `fail` raises instead."""

    def __init__(self, fail: bool = False):
        self.top1, self.scores, self.fail = [], [], fail

    def answers(self, top1):
        if self.fail:
            raise RuntimeError("a bug in reporting")
        self.top1.append(list(top1))

    def drift(self, scores):
        self.scores.append(scores)


def test_the_reporter_reports_a_sample_of_new_answers_and_the_scores_once_per_round():
    monitor, recorded = Monitor(None, (0.5,) * 3, (0.5,) * 3), Recorded()
    reporter = Reporter(monitor, lambda: recorded)
    assert reporter.report() is False and recorded.top1 == []  # nothing arrived: nothing reported
    probs = torch.softmax(torch.randn(50, 10), 1)
    for _ in range(6):
        monitor.add_answers(probs)
    assert reporter.report() is True
    (sample,) = recorded.top1
    assert 0 < len(sample) <= REPORT_SAMPLE < 300 and set(sample) <= set(probs.max(1).values.tolist())
    assert recorded.scores[0]["mean_confidence"] == pytest.approx(float(probs.max(1).values.mean()), rel=1e-5)
    assert reporter.report() is False and len(recorded.top1) == 1  # each answer reported once


def wait_until(check, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not check() and time.monotonic() < deadline:
        time.sleep(0.01)
    return check()


def test_a_failing_report_leaves_the_reporting_thread_running():
    monitor, broken = Monitor(None, (0.5,) * 3, (0.5,) * 3), Recorded(fail=True)
    reporter = Reporter(monitor, lambda: broken, every_s=0.01).start()
    monitor.add_answers(torch.softmax(torch.randn(4, 10), 1))
    assert wait_until(lambda: not monitor.unreported)  # taken, and its report raised
    broken.fail = False
    monitor.add_answers(torch.softmax(torch.randn(4, 10), 1))
    assert wait_until(lambda: bool(broken.top1)), "no report after a failed one"
    reporter.stop()
    assert len(broken.top1[0]) == 4
