"""Experiments through a real TorchServe, started and stopped by tsctl: a shadow's answers are the
primary's byte for byte while the candidate's agreement is counted as the two models give it
offline and exported to Prometheus; a rollout with a shadow phase on live traffic promotes a
candidate that agrees and refuses one that does not, every live request answered 200."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from tests.conftest import ROOT
from tests.integration.conftest import METRICS_YAML, build_mar
from tests.test_experiments import PHOTOS, offline_top1, permuted_checkpoint
from tsctl import experiment as experiments
from tsctl.local_server import TorchServe
from tsctl.rollout import Gate, Plan, State, rollout

pytestmark = pytest.mark.integration
MODEL = "exp"
# one backend everywhere, so a shadow's answers and the primary's compare byte for byte
SETTINGS = ["batchSize=8", "maxBatchDelay=20", "handler.backend=torch", "handler.precision=float32"]


@pytest.fixture(scope="module")
def server(default_checkpoint, bare, tmp_path_factory):
    work = tmp_path_factory.mktemp("experiments")
    store = work / "store"
    store.mkdir()
    build_mar(default_checkpoint, store, MODEL, "1.0", SETTINGS)
    archives = Candidates(default_checkpoint, work)
    ts = TorchServe(work / "ts", store, f"{MODEL}.mar", python=bare, extra_config={"metrics_config": METRICS_YAML})
    ts.start([MODEL])
    ts.store, ts.archives, ts.work = store, archives, work
    yield ts
    ts.stop()


class Candidates(dict):
    """2.0: the primary's weights; 3.0: its classifier rows permuted. Built when first asked for."""

    def __init__(self, checkpoint, work):
        super().__init__()
        self.checkpoint, self.work = checkpoint, work

    def __missing__(self, version: str):
        checkpoint = self.checkpoint if version == "2.0" else permuted_checkpoint(self.checkpoint, self.work / "p.pt")
        folder = self.work / version
        folder.mkdir()
        self[version] = build_mar(checkpoint, folder, MODEL, version, SETTINGS)
        return self[version]


class LiveTraffic:
    """Unversioned requests from two clients until stopped; every status code kept."""

    def __init__(self, ts):
        self.ts, self.codes, self.stop = ts, [], threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(2)]

    def _run(self, offset: int):
        i = offset
        while not self.stop.is_set():
            self.codes.append(self.ts.post(MODEL, data=PHOTOS[i % len(PHOTOS)].read_bytes(), timeout=60).status_code)
            i += 2

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join()


def test_a_shadow_answers_as_the_primary_and_counts_its_candidates_agreement(server, default_checkpoint, tmp_path):
    version = experiments.start(server.client, MODEL, server.archives["3.0"], server.store, "shadow", sample=1.0)
    try:
        assert server.client.default_version(MODEL) == version == "1.0-shadow-3.0"
        for photo in PHOTOS:
            shadowed = server.post(MODEL, data=photo.read_bytes())
            primary = server.client.predict(MODEL, photo.read_bytes(), "1.0")
            assert shadowed.status_code == primary.status_code == 200
            assert shadowed.content == primary.content and shadowed.headers["x-model-version"] == "1.0"
        time.sleep(1)  # the candidate's last pass, in its own thread
        status = experiments.status(server.client, MODEL)
        expected = (
            offline_top1(default_checkpoint),
            offline_top1(permuted_checkpoint(default_checkpoint, tmp_path / "p.pt")),
        )
        agree = sum(a == b for a, b in zip(*expected))
        assert status["pairs"] >= len(PHOTOS) - 1 and status["dropped"].get("error", 0) == 0
        assert status["top1_agreement"] == pytest.approx(agree / len(PHOTOS), abs=1.5 / len(PHOTOS))
        metrics = requests.get(f"{server.config['metrics_address']}/metrics", timeout=30).text
        assert 'image_classifier_shadow_pairs_total{model_name="exp",agree="false"' in metrics
        assert "image_classifier_shadow_agreement_lower{" in metrics
    finally:
        assert experiments.stop(server.client, MODEL) == "1.0"
    assert server.client.default_version(MODEL) == "1.0" and server.client.versions(MODEL) == ["1.0"]


def do_rollout(server, version: str, **gate) -> tuple[int, str]:
    log = []
    plan = Plan(MODEL, server.archives[version], ROOT / "samples", server.store, Gate(max_p99_ratio=50.0, **gate),
                watch_s=3, grace_s=1, shadow_pairs=80, shadow_sample=1.0, shadow_timeout_s=120,
                metrics_url=server.config["metrics_address"])  # fmt: skip
    code = rollout(server.client, plan, State(server.work / "state.json"), log=log.append)
    return code, "\n".join(log)


@pytest.mark.slow
def test_a_rollout_with_a_shadow_phase_promotes_a_candidate_that_agrees_on_live_traffic(server):
    with LiveTraffic(server) as traffic:
        code, log = do_rollout(server, "2.0")
    assert code == 0 and "live top-1 agreement 100.0%" in log and "done: exp default is v2.0" in log, log
    assert server.client.versions(MODEL) == ["2.0"]
    assert traffic.codes and set(traffic.codes) == {200}


@pytest.mark.slow
def test_a_rollout_with_a_shadow_phase_refuses_a_candidate_that_disagrees_on_live_traffic(server):
    with LiveTraffic(server) as traffic:
        code, log = do_rollout(server, "3.0", min_agreement=0.0)  # past the golden gate: the shadow decides
    assert code == 1 and "live top-1 agreement's lower bound" in log and "refused" in log, log
    assert server.client.default_version(MODEL) == "2.0" and server.client.versions(MODEL) == ["2.0"]
    assert traffic.codes and set(traffic.codes) == {200}
    assert json.loads(json.dumps(experiments.status(server.client, MODEL))) is None  # no experiment left running
