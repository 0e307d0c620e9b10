"""A real Prometheus scraping a real TorchServe's metrics endpoint, with the shipped alert rules
loaded: after real traffic the histograms and drift series exist under their documented names;
darkened photos move the input drift past its alert; a flood of bad uploads sets off no alert,
while the frontend's own 503s (no worker left) do. Everything is read back from Prometheus's HTTP
API, not from the handler. (The rules' `for:` durations are minutes: an alert whose expression
holds is seen pending.)"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import yaml
from PIL import Image

from modeltools.crops import open_photos, random_crops
from tests.conftest import ROOT
from tests.integration.conftest import METRICS_YAML, build_mar
from tsctl.local_server import TorchServe, free_port

pytestmark = pytest.mark.integration
MODEL = "observed"
PHOTOS = sorted((ROOT / "samples").glob("*.jpg"))
DOCUMENTED = [  # docs/OPERATIONS.md, "Metrics"
    "image_classifier_request_seconds_bucket",
    "image_classifier_stage_seconds_bucket",
    "image_classifier_requests_total",
    "image_classifier_batches_total",
    "image_classifier_batched_requests_total",
    "image_classifier_input_errors_total",
    "image_classifier_top1_probability_bucket",
    "image_classifier_input_drift_psi",
    "image_classifier_confidence_drift_ks",
    "image_classifier_mean_confidence",
    "image_classifier_reference_confidence",
    "image_classifier_top_class_share",
]


@pytest.fixture(scope="module")
def observed(default_checkpoint, bare, tmp_path_factory):
    if shutil.which("prometheus") is None:
        pytest.skip("Prometheus is not installed (make test installs Debian's package)")
    work = tmp_path_factory.mktemp("observed")
    store = work / "store"
    store.mkdir()
    profile = work / "profile"  # the archive's drift profile: 200 crops of the photos, like the traffic below
    profile.mkdir()
    for i, data in enumerate(crops(200, seed=0)):
        (profile / f"{i:03d}.jpg").write_bytes(data)
    build_mar(default_checkpoint, store, MODEL, sets=["batchSize=8", "maxBatchDelay=50"],
              extra=["--profile-images", profile])  # fmt: skip
    ts = TorchServe(work / "ts", store, f"{MODEL}.mar", python=bare, extra_config={"metrics_config": METRICS_YAML})
    ts.start([MODEL])
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ROOT / "deploy" / "prometheus" / "rules.yml")],
        "scrape_configs": [{"job_name": "torchserve",
                            "static_configs": [{"targets": [ts.config["metrics_address"].split("//")[1]]}]}],
    }  # fmt: skip
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    prometheus = subprocess.Popen(
        ["prometheus", f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=(work / "prometheus.log").open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    api = f"http://127.0.0.1:{port}/api/v1"
    wait_for(lambda: requests.get(f"{api}/targets", timeout=2).json()["data"]["activeTargets"][0]["health"] == "up",
             "Prometheus scraping TorchServe", work / "prometheus.log")  # fmt: skip
    yield ts, api
    prometheus.terminate()
    prometheus.wait(30)
    ts.stop()


def wait_for(condition, what: str, log=None, timeout: float = 90):
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (requests.RequestException, KeyError, IndexError, ValueError) as exc:
            last = exc
        time.sleep(0.5)
    tail = log.read_text()[-2000:] if log else ""
    pytest.fail(f"no {what} after {timeout} s ({last})\n{tail}")


def query(api: str, promql: str) -> list:
    return requests.get(f"{api}/query", params={"query": promql}, timeout=10).json()["data"]["result"]


def value(api: str, promql: str) -> float:
    return float(query(api, promql)[0]["value"][1])


def alerts(api: str) -> dict:
    return {
        a["labels"]["alertname"]: a["state"] for a in requests.get(f"{api}/alerts", timeout=10).json()["data"]["alerts"]
    }


def crops(count: int, seed: int, transform=None) -> list[bytes]:
    """JPEGs of random crops of samples/ (modeltools/crops.py)."""
    return [jpeg(c) for c in random_crops(open_photos(PHOTOS, longest=1024), count, seed, transform=transform)]


def send(ts, bodies: list[bytes]) -> list[int]:
    with ThreadPoolExecutor(8) as pool:
        return [r.status_code for r in pool.map(lambda b: ts.post(MODEL, data=b), bodies)]


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def test_after_real_traffic_every_documented_series_is_in_prometheus(observed):
    ts, api = observed
    assert set(send(ts, crops(160, seed=1))) == {200}  # traffic like the profile
    for name in DOCUMENTED[:3] + DOCUMENTED[6:]:
        wait_for(lambda n=name: query(api, f'{n}{{model_name="{MODEL}"}}'), f"series {name}")
    buckets = f'image_classifier_request_seconds_bucket{{model_name="{MODEL}"}}'
    p99 = f"histogram_quantile(0.99, sum by (le) (rate({buckets}[1m])))"
    assert set(send(ts, [p.read_bytes() for p in PHOTOS] * 2)) == {200}  # a rate needs counts that grew
    wait_for(lambda: query(api, p99) and query(api, p99)[0]["value"][1] != "NaN", "a p99 from the histogram")
    assert 0 < float(query(api, p99)[0]["value"][1]) < 10  # seconds
    assert value(api, f'image_classifier_input_drift_psi{{model_name="{MODEL}"}}') < 0.25  # no false alarm
    assert "ImageClassifierInputDrift" not in alerts(api)
    restarts = f'image_classifier_worker_restarts_total{{model_name="{MODEL}"}}'
    assert value(api, restarts) == 0  # there from the first worker on, so a first restart is an increase


def test_darkened_photos_move_the_input_drift_past_its_alert(observed):
    ts, api = observed
    dark = crops(160, seed=2, transform=lambda img: img.point(lambda v: int(v * 0.3)))
    assert set(send(ts, dark)) == {200}  # still answered 200: the failure drift alerts are made for
    drift = f'image_classifier_input_drift_psi{{model_name="{MODEL}"}}'
    wait_for(lambda: value(api, drift) > 0.25, "input drift past 0.25")
    wait_for(lambda: alerts(api).get("ImageClassifierInputDrift") in ("pending", "firing"), "input drift alert")


@pytest.mark.slow
def test_a_worker_killed_once_fires_the_restart_alert(observed):
    ts, api = observed
    restarts = f'image_classifier_worker_restarts_total{{model_name="{MODEL}"}}'
    assert set(send(ts, [PHOTOS[0].read_bytes()] * 2)) == {200}  # the worker's first request writes the series
    wait_for(lambda: query(api, restarts), "the restart series, at 0 before any restart")
    assert value(api, restarts) == 0 and "ImageClassifierWorkerRestarts" not in alerts(api)
    (pid,) = ts.worker_pids(MODEL)
    os.kill(pid, signal.SIGKILL)
    ts.client.wait_ready(MODEL, 120)
    wait_for(lambda: set(send(ts, [PHOTOS[0].read_bytes()] * 2)) == {200} and value(api, restarts) == 1,
             "the restart counted")  # fmt: skip
    wait_for(
        lambda: alerts(api).get("ImageClassifierWorkerRestarts") == "firing",
        f"the worker-restart alert ({query(api, restarts)}; {query(api, f'increase({restarts}[15m])')})",
    )


@pytest.mark.slow
def test_a_flood_of_bad_uploads_pages_nobody_and_the_frontends_5xx_do(observed):
    """Last: it leaves the model without a worker for a while."""
    ts, api = observed
    counted = f'image_classifier_input_errors_total{{model_name="{MODEL}",error_type="not_an_image"}}'
    assert set(send(ts, [b"not an image, just text"] * 4)) == {400}
    wait_for(lambda: query(api, counted), "input errors counted")  # then the flood, which the rate sees grow
    assert set(send(ts, [b"not an image, just text"] * 60)) == {400}
    rate = f'sum(rate(image_classifier_requests_total{{model_name="{MODEL}",outcome="client_error"}}[1m]))'
    wait_for(lambda: value(api, rate) > 0, "the flood's rate")
    time.sleep(3)  # a few evaluations of the rules over it
    assert not {"ImageClassifierHighErrorRate", "ImageClassifierServerErrors"} & set(alerts(api))  # the client's fault
    # the fault: no worker left, so the frontend itself answers 503, which the handler never sees
    ts.client.scale(MODEL, None, 0)
    try:
        statuses = send(ts, [PHOTOS[0].read_bytes()] * 6)
        assert set(statuses) <= {503, 507} and statuses, statuses

        def alerting() -> bool:  # the first 503s create TorchServe's counter; a rate needs the ones after
            send(ts, [PHOTOS[0].read_bytes()])
            return alerts(api).get("TorchServeFrontendErrors") in ("pending", "firing")

        wait_for(alerting, "frontend 5xx alert")
    finally:
        ts.client.scale(MODEL, None, 1)
        ts.client.wait_ready(MODEL, 120)
