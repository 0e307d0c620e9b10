"""KServe's model server on the request core, as a pod starts it (from a read-only storage mount),
through its ports only: gRPC with tritonclient and kserve's client, a body past the bound
refused before it is parsed, requests that arrive together run as one batch, the same metric
series TorchServe exposes, and a shadow and a split experiment answered through it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.clients import assert_acceptable
from tests.conftest import ROOT
from tests.integration.conftest import MODEL, build_mar, run_make
from tsctl.kserve_local import KServeServer

pytestmark = pytest.mark.integration
PHOTOS = ["kitten.jpg", "dog1.jpg", "croco.jpg"]


def grpc_clients(which: str, address: str, paths: list, model: str = MODEL) -> dict:
    out = subprocess.run([sys.executable, "-m", "tests.grpc_clients", which, address, model, *map(str, paths)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def test_grpc_clients_get_the_labels_and_a_bad_image_is_invalid_argument(kserve_server, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    paths = [ROOT / "samples" / n for n in PHOTOS] + [bad]
    for which in ("triton", "kserve"):
        singles = grpc_clients(which, kserve_server.grpc_address, paths)["singles"]
        assert_acceptable([s.get("label") for s in singles[:3]], PHOTOS)
        assert singles[3]["status"] == "StatusCode.INVALID_ARGUMENT", singles[3]
        assert '"type": "not_an_image"' in singles[3]["details"], singles[3]
    out = grpc_clients("triton", kserve_server.grpc_address, paths)
    assert [len(row) for row in out["batch_labels"]] == [2, 2, 2] and out["batch_outputs"] == ["label"]
    assert_acceptable([row[0] for row in out["batch_labels"]], PHOTOS)
    assert_acceptable([out["uint8_label"]], PHOTOS[:1])  # pixels a client decoded, as UINT8 [1, H, W, 3]
    assert out["ready"] and out["metadata_outputs"] == ["label", "probability", "index"]


def test_a_body_past_the_bound_is_413_before_it_is_parsed_and_neighbours_are_answered(kserve_server, photos):
    url = f"{kserve_server.url}/v2/models/{MODEL}/infer"
    limit = 24 * 2**20 * 4 // 3 + 2**20  # the archive's max_body_bytes in base64, and 1 MiB of JSON
    with ThreadPoolExecutor(2) as pool:
        big = pool.submit(requests.post, url, data=b"[" * (limit + 1), timeout=60,
                          headers={"content-type": "application/json"})  # fmt: skip
        good = pool.submit(requests.post, f"{kserve_server.url}/v1/models/{MODEL}:predict", data=photos["dog1.jpg"],
                           timeout=60)  # fmt: skip
        assert big.result().status_code == 413 and big.result().json()["type"] == "body_too_large"
        assert good.result().status_code == 200 and good.result().json()[0]["label"] == "Labrador retriever"


def test_requests_that_arrive_together_run_as_one_batch(kserve_server, photos):
    """batchSize 8, maxBatchDelay 300 ms (the archive's): eight requests at once are one pass."""
    before = kserve_server.health()["batches"]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: requests.post(f"{kserve_server.url}/v1/models/{MODEL}:predict",
                                                        data=photos[PHOTOS[i % 3]], timeout=60), range(8)))  # fmt: skip
    assert [a.status_code for a in answers] == [200] * 8
    health = kserve_server.health()
    assert requests.get(f"{kserve_server.url}/v2/health/live", timeout=10).json() == {"live": True}
    assert health["batches"] - before <= 2 and health["batch_size"] == 8 and health["max_batch_delay_ms"] == 300


def _families(text: str) -> dict:
    """image_classifier_* metric families -> their label names (model_name first)."""
    out = {}
    for name, labels in re.findall(r"^(image_classifier_\w+?)(?:_bucket|_count|_sum|_created)?\{([^}]*)\}", text, re.M):
        keys = {kv.split("=")[0] for kv in labels.split(",") if kv} - {"le", "Level", "Hostname"}
        out.setdefault(name, set()).update(keys)
    return out


def test_the_metric_series_are_torchserves(server, kserve_server, photos):
    for post in (
        lambda body: server.post(MODEL, data=body),
        lambda body: requests.post(f"{kserve_server.url}/v1/models/{MODEL}:predict", data=body, timeout=60),
    ):
        assert post(photos["kitten.jpg"]).status_code == 200 and post(b"not an image").status_code == 400
    time.sleep(1.5)  # the drift reporter's tick
    ts = _families(requests.get(f"{server.config['metrics_address']}/metrics", timeout=30).text)
    ks = _families(requests.get(f"{kserve_server.url}/metrics", timeout=30).text)
    expected = {"image_classifier_requests_total", "image_classifier_request_seconds", "image_classifier_stage_seconds",
                "image_classifier_batches_total", "image_classifier_input_errors_total",
                "image_classifier_worker_restarts_total", "image_classifier_top1_probability"}  # fmt: skip
    assert expected <= set(ts) and expected <= set(ks)
    for name in set(ts) & set(ks):
        assert ts[name] == ks[name], name


@pytest.fixture(scope="module")
def experiment_archives(default_checkpoint, tmp_path_factory):
    from tests.test_experiments import permuted_checkpoint

    work = tmp_path_factory.mktemp("kserve-experiments")
    candidate = permuted_checkpoint(default_checkpoint, work / "permuted.pt")
    settings = ["batchSize=8", "maxBatchDelay=20", "handler.backend=torch", "handler.precision=float32"]
    archives = {}
    for mode, extra in (("shadow", ["--sample", "1.0"]), ("split", ["--share", "0.5"])):
        store = work / mode
        store.mkdir()
        extra = ["--candidate", candidate, "--candidate-version", "3.0", "--experiment", mode, *extra]
        build_mar(default_checkpoint, store, MODEL, "1.0", settings, extra=extra)
        (archives[mode],) = store.glob("*.mar")
    return archives


@pytest.mark.slow  # two archives built and two servers started: most of a minute
def test_a_shadow_and_a_split_answer_through_the_kserve_server(experiment_archives, photos, tmp_path):
    shadow = KServeServer(tmp_path / "shadow", experiment_archives["shadow"], MODEL).start()
    try:
        answers = [requests.post(f"{shadow.url}/v1/models/{MODEL}:predict", data=photos[n], timeout=60)
                   for n in PHOTOS]  # fmt: skip
        assert {a.headers["x-model-version"] for a in answers} == {"1.0"}
        assert_acceptable([a.json()[0]["label"] for a in answers], PHOTOS)
        time.sleep(1.5)  # the candidate's last pass, in its own thread, and the reporter's tick
        health = shadow.health()["experiment"]
        assert health["mode"] == "shadow" and health["pairs"] == len(PHOTOS) and not health["dropped"]
        metrics = requests.get(f"{shadow.url}/metrics", timeout=30).text
        assert 'image_classifier_shadow_pairs_total{agree="false",model_name="efficientnet_lite0"}' in metrics
    finally:
        shadow.stop()
    split = KServeServer(tmp_path / "split", experiment_archives["split"], MODEL).start()
    try:

        def version(key: str) -> str:
            answer = requests.post(f"{split.url}/v1/models/{MODEL}:predict", data=photos["kitten.jpg"], timeout=60,
                                   headers={"x-user-id": key})  # fmt: skip
            assert answer.status_code == 200
            return answer.headers["x-model-version"]

        keys = [f"user-{i}" for i in range(16)]
        first = [version(k) for k in keys]
        assert first == [version(k) for k in keys] and set(first) == {"1.0", "3.0"}
        grpc = grpc_clients("triton", split.grpc_address, [ROOT / "samples" / "kitten.jpg"])["versions_by_key"]
        assert set(grpc) == {"1.0", "3.0"}  # gRPC metadata carries the key too
        requests_by_arm = split.health()["experiment"]["requests"]
        assert requests_by_arm["candidate"]["ok"] >= first.count("3.0") * 2
        assert requests_by_arm["primary"]["ok"] >= first.count("1.0") * 2
    finally:
        split.stop()


@pytest.mark.slow
def test_make_serve_with_the_kserve_server_answers_on_kserves_ports_and_make_stop_stops_it(server, photos):
    busy = [p for p in (8080, 8081) if _listening(p)]
    if busy:
        pytest.fail(f"ports {busy} are taken on this machine (make stop?): make serve SERVER=kserve uses them")
    mar = server.model_store / f"{MODEL}.mar"
    try:
        out = run_make("serve", "SERVER=kserve", f"MAR={mar}")
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "tiger cat" in out.stdout and "gRPC 8081" in out.stdout
        answer = requests.post(f"http://127.0.0.1:8080/v1/models/{MODEL}:predict", data=photos["dog1.jpg"], timeout=60)
        assert answer.json()[0]["label"] == "Labrador retriever"
        singles = grpc_clients("triton", "127.0.0.1:8081", [ROOT / "samples" / "croco.jpg"])["singles"]
        assert_acceptable([singles[0]["label"]], ["croco.jpg"])
        again = run_make("serve", "SERVER=kserve", f"MAR={mar}", timeout=120)
        assert again.returncode != 0 and "make stop first" in again.stdout
    finally:
        stopped = run_make("stop", timeout=120)
    assert "Stopped the KServe model server" in stopped.stdout
    assert not any(_listening(p) for p in (8080, 8081))


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
