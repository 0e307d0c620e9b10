"""The KServe bundle served as KServe's TorchServe runtime serves it: `torchserve --start
--model-store=MOUNT/model-store --ts-config=MOUNT/config/config.properties` with
TS_SERVICE_ENVELOPE=kservev2 in its environment, called without a token as the wrapper calls
it, by tritonclient and kserve's client. The only change to the bundle's config: its ports move
to free ones and /mnt/models to the folder it is mounted at here."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time

import pytest
import requests
import tritonclient.http as triton
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from tritonclient.utils import InferenceServerException

from tests.clients import assert_acceptable, b64, first_labels, triton_input
from tests.conftest import ROOT
from tsctl.local_server import LAUNCH, free_port

pytestmark = pytest.mark.integration
MODEL = "efficientnet_lite0"
NAMES = ["kitten.jpg", "dog1.jpg", "croco.jpg"]


@pytest.fixture(scope="module")
def bundle(default_checkpoint, tmp_path_factory):
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    from kserve_bundle import write_bundle

    return write_bundle(default_checkpoint, MODEL, "1.0", tmp_path_factory.mktemp("kserve"), ["maxBatchDelay=300"])


@pytest.fixture(scope="module")
def pod(bundle, bare, tmp_path_factory):
    """TorchServe started from the bundle as KServe's runtime starts it; yields its inference URL."""
    work = tmp_path_factory.mktemp("pod")
    mount = work / "models"  # the storageUri's content, as the storage initializer lays it out
    shutil.copytree(bundle, mount)
    text = (mount / "config" / "config.properties").read_text().replace("/mnt/models", str(mount))
    ports = {}
    for key in ("inference_address", "management_address", "metrics_address"):
        old = re.search(rf"^{key}=http://[\d.]+:(\d+)$", text, re.M).group(1)
        ports[key] = free_port()
        text = re.sub(rf"^({key}=http://[\d.]+:){old}$", rf"\g<1>{ports[key]}", text, flags=re.M)
    for key in ("grpc_inference_port", "grpc_management_port"):
        ports[key] = free_port()
        text = re.sub(rf"^{key}=\d+$", f"{key}={ports[key]}", text, flags=re.M)
    text += f"initial_worker_port={free_port() // 100 * 100 % 40000 + 20000}\n"  # clear of other servers here
    (mount / "config" / "config.properties").write_text(text)
    env = {"PATH": os.environ["PATH"], "TMPDIR": str(work), "TS_SERVICE_ENVELOPE": "kservev2", "HOME": str(work)}
    subprocess.run(
        [
            str(bare),
            "-c",
            LAUNCH,
            "--start",
            f"--model-store={mount}/model-store",
            f"--ts-config={mount}/config/config.properties",
        ],
        cwd=work,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    management = f"http://127.0.0.1:{ports['management_address']}"
    deadline, last = time.monotonic() + 240, None
    while time.monotonic() < deadline:  # the wrapper's readiness check: the management API, no token
        try:
            last = requests.get(f"{management}/models/{MODEL}", timeout=5)
            if last.ok and any(w["status"] == "READY" for w in last.json()[0]["workers"]):
                break
        except requests.RequestException as exc:
            last = exc
        time.sleep(1)
    else:
        subprocess.run([str(bare), "-c", LAUNCH, "--stop"], cwd=work, env=env)
        pytest.fail(f"the bundle's TorchServe did not get ready: {last}")
    yield {
        "inference": f"http://127.0.0.1:{ports['inference_address']}",
        "management": management,
        "work": work,
        "grpc": f"127.0.0.1:{ports['grpc_inference_port']}",
        "metrics": f"http://127.0.0.1:{ports['metrics_address']}",
    }
    subprocess.run([str(bare), "-c", LAUNCH, "--stop"], cwd=work, env=env, stdout=subprocess.DEVNULL)


def test_bundle_layout_and_config(bundle):
    assert sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()) == [
        "config/config.properties",
        "config/metrics.yaml",
        f"model-store/{MODEL}.mar",
    ]
    props = dict(
        line.split("=", 1)
        for line in (bundle / "config" / "config.properties").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert props["disable_token_authorization"] == "true" and props["enable_model_api"] == "false"
    assert "enable_envvars_config" not in props and props["metrics_mode"] == "prometheus"
    snapshot = json.loads(props["model_snapshot"])["models"][MODEL]["1.0"]
    assert (snapshot["marName"], snapshot["batchSize"], snapshot["minWorkers"]) == (f"{MODEL}.mar", 8, 1)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_without_a_token(pod, photos, binary):
    client = triton.InferenceServerClient(pod["inference"].removeprefix("http://"), network_timeout=120)
    result = client.infer(MODEL, [triton_input([photos[n] for n in NAMES], binary)], request_id="pod-1")
    assert_acceptable(first_labels(result), NAMES)
    assert result.get_response()["id"] == "pod-1" and result.as_numpy("index").shape == (3, 5)


def test_kserve_client_v2_and_v1(pod, photos):
    async def run():
        v2 = InferenceRESTClient(RESTConfig(protocol="v2", timeout=120))
        v1 = InferenceRESTClient(RESTConfig(protocol="v1", timeout=120))
        request = InferRequest(
            MODEL, [InferInput("image", [3], "BYTES", [b64(photos[n]) for n in NAMES])], request_id="k"
        )
        return await asyncio.gather(
            v2.infer(pod["inference"], request, model_name=MODEL),
            v1.infer(pod["inference"], {"instances": [b64(photos["bus.jpg"])]}, model_name=MODEL),
        )

    v2, v1 = asyncio.run(run())
    assert v2.id == "k"
    labels = {o.name: o.as_numpy() for o in v2.outputs}["label"]
    assert_acceptable([v.decode() if isinstance(v, bytes) else v for v in labels[:, 0]], NAMES)
    assert v1["predictions"][0][0]["label"] == "minibus"


def test_v2_json_on_predictions_as_the_wrapper_posts_it(pod, photos):
    body, _ = InferRequest(
        MODEL, [InferInput("image", [1], "BYTES", [b64(photos["dog2.jpg"])])], request_id="w"
    ).to_rest()
    resp = requests.post(
        f"{pod['inference']}/predictions/{MODEL}",
        data=json.dumps(body),
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["id"] == "w" and resp.json()["outputs"][0]["data"][0] == "Brittany spaniel"


def test_bad_image_is_a_4xx_oip_error_while_batched_neighbours_succeed(pod, photos):
    client = triton.InferenceServerClient(pod["inference"].removeprefix("http://"), concurrency=4, network_timeout=120)
    bad = client.async_infer(MODEL, [triton_input([b"\x89PNG\r\n\x1a\n" + bytes(40)], True)])
    goods = [client.async_infer(MODEL, [triton_input([photos[n]], True)]) for n in NAMES]
    with pytest.raises(InferenceServerException) as err:
        bad.get_result()
    assert err.value.status() == "400" and "input element 0 of 1" in err.value.message()
    for name, good in zip(NAMES, goods):
        assert_acceptable(first_labels(good.get_result()), [name])


def test_the_pod_config_refuses_registration_and_serves_metrics(pod):
    resp = requests.post(f"{pod['management']}/models", params={"url": f"{MODEL}.mar"}, timeout=30)
    assert resp.status_code in (400, 403, 405), resp.text
    metrics = requests.get(f"{pod['metrics']}/metrics", timeout=30)
    assert metrics.status_code == 200 and "ts_inference_requests_total" in metrics.text
    log = (pod["work"] / "logs" / "ts_log.log").read_text(errors="replace")
    assert "can access any URL" not in log


def test_grpc_v2_as_the_wrapper_translates_it(pod, photos):
    """KServe's wrapper turns grpc-v2 into TorchServe's gRPC Predictions: the v2 request as JSON
    under "data", BYTES base64-encoded (kubernetes/kserve/kserve_wrapper/gprc_utils.py)."""
    import grpc

    from tsctl.grpc_client import _modules

    inference_pb2, inference_grpc, _, _ = _modules()
    request = {
        "id": "g1",
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(photos["dog1.jpg"])]}],
    }
    with grpc.insecure_channel(pod["grpc"]) as channel:
        reply = inference_grpc.InferenceAPIsServiceStub(channel).Predictions(
            inference_pb2.PredictionsRequest(model_name=MODEL, input={"data": json.dumps(request).encode()}), timeout=60
        )
    answer = json.loads(reply.prediction)
    assert answer["id"] == "g1" and answer["outputs"][0]["data"][0] == "Labrador retriever"
