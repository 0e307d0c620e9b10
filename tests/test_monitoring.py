"""The window of what the model is fed and how sure it is, against a reference profile of a few
hundred images: traffic from the same distribution drifts nowhere (the false-alarm rate is
measured), swapped channels and darkness move the input score past its alert, a collapse of
confidence moves the confidence score; scores need a full-enough window, and a profile too
small to carry a signal gives none until the worker pins its first live images."""

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
from handlers.monitoring import (
    MIN_PROFILE,
    MIN_WINDOW,
    REPORT_SAMPLE,
    WINDOW,
    Monitor,
    Profile,
    Reporter,
    answer_stats,
    channel_means,
    ks,
    psi,
)
from handlers.request.pixels import image_pixels, recipe_pixels
from modeltools.crops import open_photos, random_crops
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


def crops(recipe, count: int, seed: int, transform=None) -> torch.Tensor:
    """uint8 [count, 3, H, W]: random crops of samples/ (modeltools/crops.py), shrunk first so
    they cut and resize in a millisecond, as served: one distribution, drawn afresh for each seed."""
    photos = open_photos(PHOTOS, longest=640)
    return torch.stack([recipe_pixels(c, recipe) for c in random_crops(photos, count, seed, transform=transform)])


@pytest.fixture(scope="module")
def profile(model_and_recipe) -> Profile:
    """The reference of an archive built with --profile-images: 200 crops."""
    model, recipe = model_and_recipe
    pixels = crops(recipe, 200, seed=0)
    with torch.inference_mode():
        top1 = torch.softmax(model(normalize(pixels, recipe)), 1).max(1).values.numpy()
    return Profile(channel_means(pixels, recipe.mean, recipe.std), top1)


def test_traffic_like_the_profile_raises_no_false_alarm(model_and_recipe, profile):
    _, recipe = model_and_recipe
    windows = [crops(recipe, WINDOW, seed) for seed in (1, 2, 3)]
    scores = [max(psi(profile.channel_means[:, c], channel_means(w, recipe.mean, recipe.std)[:, c]) for c in range(3))
              for w in windows]  # fmt: skip
    assert max(scores) < 0.1, scores  # false alarms at 0.25: none in these windows, with room to spare


@pytest.mark.parametrize(
    "name, transform, drifts",
    [
        ("more of the same kind of photo", None, False),
        ("channels swapped (BGR sent for RGB)", lambda img: Image.merge("RGB", img.split()[::-1]), True),
        ("darkened to 30%", lambda img: img.point(lambda v: int(v * 0.3)), True),
    ],
)
def test_input_drift_against_the_profile(model_and_recipe, profile, name, transform, drifts):
    model, recipe = model_and_recipe
    monitor = Monitor(profile, recipe.mean, recipe.std)
    scores = feed(monitor, model, recipe, crops(recipe, 120, seed=7, transform=transform), times=1)
    assert (scores["input_drift_psi"] > 0.25) is drifts, (name, scores)
    assert scores["reference_confidence"] == pytest.approx(float(profile.top1.mean()))
    if not drifts:
        assert scores["input_drift_psi"] < 0.1 and scores["confidence_drift_ks"] < 0.2


def test_a_collapse_of_confidence_moves_the_ks_score_and_the_mean(model_and_recipe, profile):
    model, recipe = model_and_recipe
    monitor = Monitor(profile, recipe.mean, recipe.std)
    noise = torch.randint(
        0, 256, (len(PHOTOS), 3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    scores = feed(monitor, model, recipe, noise)
    assert scores["confidence_drift_ks"] > 0.3 and scores["mean_confidence"] < 0.75 * scores["reference_confidence"]


def test_no_score_before_the_window_holds_enough(model_and_recipe, profile):
    model, recipe = model_and_recipe
    monitor = Monitor(profile, recipe.mean, recipe.std)
    pixels = served(recipe)[:2]
    scores = feed(monitor, model, recipe, pixels, times=1)
    assert scores["input_drift_psi"] is None and scores["confidence_drift_ks"] is None and MIN_WINDOW > 2
    assert Monitor(None, recipe.mean, recipe.std).scores()["input_drift_psi"] is None


def test_a_profile_too_small_gives_no_drift_until_live_images_are_pinned(served_archive, model_and_recipe):
    _, recipe = model_and_recipe
    small = Profile.of(ReferenceSet.load(served_archive / FILE), recipe.mean, recipe.std)  # samples/: 8 photos
    assert small.images < MIN_PROFILE
    monitor = Monitor(small, recipe.mean, recipe.std)

    def feed_inputs(pixels: torch.Tensor) -> dict:  # answers of any confidence: only the inputs are judged here
        monitor.add_inputs(pixels)
        monitor.add_answers(torch.softmax(torch.randn(len(pixels), 10, generator=torch.Generator().manual_seed(0)), 1))
        return monitor.scores()

    scores = feed_inputs(crops(recipe, 200, seed=1))  # traffic unlike the 8 photos: no score, not a false alarm
    assert scores["input_drift_psi"] is None and scores["confidence_drift_ks"] is None
    assert monitor.describe()["reference"]["drift"].startswith("off until 500 live images are pinned")
    scores = feed_inputs(crops(recipe, 300, seed=2))  # the window is full: pinned as the profile
    assert scores["input_drift_psi"] == pytest.approx(0, abs=1e-9)
    assert monitor.describe()["reference"]["source"] == "live"
    scores = feed_inputs(crops(recipe, WINDOW, seed=3, transform=lambda i: i.point(lambda v: v // 3)))
    assert scores["input_drift_psi"] > 0.25


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
