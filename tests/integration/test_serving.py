"""End to end through a real TorchServe (started with a Python that lacks this package)."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import labelled_photos
from tests.integration.conftest import MODEL

pytestmark = pytest.mark.integration


def test_the_serving_python_cannot_import_this_package(bare, tmp_path):
    # The server fixture runs TorchServe on this Python, so every answer below came from
    # the handler code inside the .mar.
    probe = subprocess.run([str(bare), "-c", "import handlers"], capture_output=True, text=True, cwd=tmp_path)
    assert probe.returncode != 0 and "No module named 'handlers'" in probe.stderr
    ok = subprocess.run([str(bare), "-c", "import torch, torchvision, timm, PIL, yaml, ts"], capture_output=True)
    assert ok.returncode == 0


@pytest.mark.parametrize("name", sorted(labelled_photos()))
def test_labelled_photo_through_the_server(server, photos, name):
    resp = server.post(MODEL, data=photos[name], headers={"Content-Type": "application/octet-stream"})
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert len(answer) == 5 and {"label", "index", "probability"} <= set(answer[0])
    if labelled_photos()[name] is not None:
        assert answer[0]["label"] in labelled_photos()[name]


def test_multipart_upload(server, photos):
    resp = server.post(MODEL, files={"data": ("dog1.jpg", photos["dog1.jpg"], "image/jpeg")})
    assert resp.status_code == 200 and resp.json()[0]["label"] == "Labrador retriever"


def test_token_is_required(server, photos):
    resp = server.post(MODEL, token=None, data=photos["dog1.jpg"])
    assert resp.status_code in (400, 401) and "Token" in resp.text
    resp = server.post(MODEL, token=None, data=photos["dog1.jpg"], headers={"Authorization": "Bearer wrong"})
    assert resp.status_code in (400, 401)


def test_bad_request_is_4xx_json_and_its_batch_neighbours_succeed(server, photos):
    bodies = [photos["dog1.jpg"], b"definitely not an image", photos["croco.jpg"], photos["dog2.jpg"]]
    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda b: server.post(MODEL, data=b), bodies))
    assert [r.status_code for r in responses] == [200, 400, 200, 200]
    error = responses[1].json()
    assert error["type"] == "not_an_image" and error["code"] == 400 and "image" in error["message"]
    assert responses[0].json()[0]["label"] == "Labrador retriever"
    assert responses[2].json()[0]["label"] == "African crocodile"
    assert responses[3].json()[0]["label"] == "Brittany spaniel"


def test_describe_customized_shows_handler_health(server):
    desc = server.client.management("GET", f"/models/{MODEL}", params={"customized": "true"}).json()[0]
    health = desc["customizedMetadata"]
    if isinstance(health, str):
        import json

        health = json.loads(health)
    assert health["architecture"] == "timm:tf_efficientnet_lite0"
    assert health["device"] == "cpu" and health["warmup_ms"] > 0
    # the fastest backend that keeps the reference photos' answers serves, and health says why
    selection = health["engine_selection"]
    assert selection["chosen"] == f"{health['backend']}/{health['precision']}"
    candidates = selection["candidates"]
    assert {"torch/float32", "onnxruntime/float32", "openvino/float32"} <= set(candidates)
    verified = {label: c["ms_per_image"] for label, c in candidates.items() if c.get("verified")}
    assert candidates["torch/float32"]["verified"] and candidates["onnxruntime/float32"]["top1_agree"] == "8/8"
    assert selection["chosen"] == min(verified, key=verified.get)
    assert health["model_version"] == desc["modelVersion"] == "1.0"
    assert 0 < health["ready_after_s"] < 120  # seconds from the worker process's start to ready


def test_tsctl_predict_prints_labels(server, photos, tmp_path):
    import sys

    from tests.conftest import IMAGES, ROOT

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tsctl.cli",
            "--inference-url",
            server.inference_url,
            "--management-url",
            server.management_url,
            "--key-file",
            str(server.workdir / "key_file.json"),
            "predict",
            MODEL,
            str(IMAGES / "kitten.jpg"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert "tiger cat" in out.stdout.splitlines()[0].split(":", 1)[1].split(",")[0]


def test_ping_with_token(server):
    r = requests.get(f"{server.inference_url}/ping", headers={"Authorization": f"Bearer {server.keys.inference}"})
    assert r.status_code == 200 and r.json()["status"] == "Healthy"


def test_models_load_from_the_model_store_only(server):
    key = server.keys.management
    resp = requests.post(
        f"{server.management_url}/models",
        params={"url": "https://example.com/model.mar"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert resp.status_code in (400, 404) and "does not match any allowed URL" in resp.text, resp.text
    log = (server.workdir / "logs" / "ts_log.log").read_text(errors="replace")
    assert "can access any URL" not in log
