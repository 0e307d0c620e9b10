"""The KServe pod's request path as the pod runs it, on this machine: the bundle of `make
kserve-bundle` at a mount folder; TorchServe started with the ServingRuntime's arguments and
environment (deploy/kserve/overlays/torchserve/servingruntime.yaml); then KServe's TorchServe wrapper, from
the torchserve-kfs:0.12.0 image's sources (kserve 0.13.0 in its own environment, built by
`make kserve-wrapper`), started as the image's entrypoint starts it, once per protocolVersion
the ServingRuntime lists. Clients call the wrapper's ports only (REST 8080, gRPC 8081), as
they do through the cluster's ingress.

What works through the wrapper under each protocolVersion is PROTOCOLS below, the table
docs/KUBERNETES.md shows (a test checks that they agree): what fails there fails inside
KServe's wrapper, not in TorchServe or the handler."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import tritonclient.http as triton
import yaml
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

from tests.clients import b64
from tests.conftest import ROOT, labelled_photos
from tsctl.local_server import LAUNCH

pytestmark = pytest.mark.integration
MODEL = "efficientnet_lite0"
WRAPPER = ROOT / "build" / "kserve-wrapper"  # `make kserve-wrapper`
RUNTIME = ROOT / "deploy" / "kserve" / "overlays" / "torchserve" / "servingruntime.yaml"
TWO = ["kitten.jpg", "dog1.jpg"]
# Every client check, and what it gives under each protocolVersion: "ok" (labels right) or
# "fails" (an error from the wrapper). docs/KUBERNETES.md, "Protocols", is this table.
CHECKS = {
    "OIP REST, JSON (tritonclient, kserve client), 1 image": "oip_json_one",
    "OIP REST, JSON, several images": "oip_json_many",
    "OIP REST, binary tensors (tritonclient's default)": "oip_binary",
    "KServe v1 REST (kserve client)": "v1",
    "OIP gRPC, bytes_contents (kserve client), 1 image": "grpc_kserve",
    "OIP gRPC, raw_input_contents (tritonclient)": "grpc_triton",
}
PROTOCOLS = {
    "v2": {"oip_json_one": "ok", "oip_json_many": "ok", "oip_binary": "fails", "v1": "fails",
           "grpc_kserve": "fails", "grpc_triton": "fails"},
    "v1": {"oip_json_one": "ok", "oip_json_many": "ok", "oip_binary": "fails", "v1": "ok",
           "grpc_kserve": "fails", "grpc_triton": "fails"},
    "grpc-v2": {"oip_json_one": "ok", "oip_json_many": "fails", "oip_binary": "fails", "v1": "fails",
                "grpc_kserve": "ok", "grpc_triton": "fails"},
}  # fmt: skip
PORTS = (8080, 8081, 8082, 8085, 8086, 7070, 7071)  # the wrapper's, then TorchServe's in the bundle


def runtime_container() -> dict:
    return yaml.safe_load(RUNTIME.read_text())["spec"]["containers"][0]


def runtime_env(protocol: str) -> dict:
    """The ServingRuntime's environment as KServe fills it in for an InferenceService of
    `protocol` (it also sets PROTOCOL_VERSION for the wrapper)."""
    envelope = "kserve" if protocol == "v1" else "kservev2"
    env = {e["name"]: e["value"].replace("{{.Labels.serviceEnvelope}}", envelope) for e in runtime_container()["env"]}
    return {**env, "PROTOCOL_VERSION": protocol}


def _busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def pod(default_checkpoint, bare, tmp_path_factory):
    """TorchServe of the pod, started from the bundle at its mount folder; yields the mount,
    the environment and how long TorchServe took to a READY worker."""
    if not (WRAPPER / "venv" / "bin" / "python").exists():
        pytest.skip(f"KServe's wrapper is not built at {WRAPPER}: `make kserve-wrapper` builds it from "
                    "../shared/kserve/torchserve-kfs (make test does)")  # fmt: skip
    busy = [p for p in PORTS if _busy(p)]
    if busy:
        pytest.fail(f"the pod's fixed ports {busy} are taken on this machine (make stop?): the pod test uses "
                    "the ports the pod uses")  # fmt: skip
    sys.path.insert(0, str(ROOT / "scripts"))
    from kserve_bundle import write_bundle

    work = tmp_path_factory.mktemp("pod")
    mount = write_bundle(
        default_checkpoint, MODEL, "1.0", work, ["maxBatchDelay=100"], mount=str(work / MODEL / "v1.0")
    )
    (work / "tmp").mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(work), "TMPDIR": str(work / "tmp"), **runtime_env("v2")}
    env["LOG_LOCATION"] = env["METRICS_LOCATION"] = str(work / "tmp" / "logs")
    args = [a.replace("/mnt/models", str(mount)) for a in runtime_container()["args"]]
    assert args[:2] == ["torchserve", "--start"]
    start = time.monotonic()
    subprocess.run([str(bare), "-c", LAUNCH, *args[1:]], cwd=work, env=env, check=True, stdout=subprocess.DEVNULL)
    yield {"mount": mount, "work": work, "env": env, "start": start}
    subprocess.run([str(bare), "-c", LAUNCH, "--stop"], cwd=work, env=env, stdout=subprocess.DEVNULL)


class Wrapper:
    """KServe's wrapper, started as the image's entrypoint starts it after TorchServe."""

    def __init__(self, pod, protocol: str):
        env = {**os.environ, **runtime_env(protocol), "CONFIG_PATH": str(pod["mount"] / "config" / "config.properties")}
        self.log = pod["work"] / f"wrapper-{protocol}.log"
        self.started = time.monotonic()
        self.proc = subprocess.Popen([str(WRAPPER / "venv" / "bin" / "python"), "__main__.py"],
                                     cwd=WRAPPER / "kserve_wrapper", env=env, stdout=self.log.open("w"),
                                     stderr=subprocess.STDOUT)  # fmt: skip

    def wait_ready(self, timeout: float = 240) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"KServe's wrapper exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                if requests.get("http://127.0.0.1:8080/v2/health/ready", timeout=2).json().get("ready"):
                    return time.monotonic()
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.2)
        pytest.fail(f"KServe's wrapper not ready after {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)


def photo(name: str) -> bytes:
    return (ROOT / "samples" / name).read_bytes()


def labels_right(labels, names) -> bool:
    labels = [v.decode() if isinstance(v, bytes) else v for v in labels]
    return len(labels) == len(names) and all(label in labelled_photos()[n] for label, n in zip(labels, names))


def oip_json(names) -> bool:
    client = triton.InferenceServerClient("127.0.0.1:8080", network_timeout=120)
    tensor = triton.InferInput("image", [len(names)], "BYTES")
    tensor.set_data_from_numpy(np.array([b64(photo(n)) for n in names], dtype=object), binary_data=False)
    triton_ok = labels_right(client.infer(MODEL, [tensor]).as_numpy("label")[:, 0], names)

    async def kserve():
        rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=120))
        request = InferRequest(MODEL, [InferInput("image", [len(names)], "BYTES", [b64(photo(n)) for n in names])])
        return await rest.infer("http://127.0.0.1:8080", request, model_name=MODEL)

    response = asyncio.run(kserve())
    return triton_ok and labels_right(response.outputs[0].as_numpy()[:, 0], names)


def oip_binary() -> bool:
    client = triton.InferenceServerClient("127.0.0.1:8080", network_timeout=120)
    tensor = triton.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([photo("dog1.jpg")], dtype=object), binary_data=True)
    return labels_right(client.infer(MODEL, [tensor]).as_numpy("label")[:, 0], ["dog1.jpg"])


def v1() -> bool:
    async def run():
        rest = InferenceRESTClient(RESTConfig(protocol="v1", timeout=120))
        return await rest.infer("http://127.0.0.1:8080", {"instances": [b64(photo(n)) for n in TWO]}, model_name=MODEL)

    return labels_right([p[0]["label"] for p in asyncio.run(run())["predictions"]], TWO)


def grpc_kserve() -> bool:
    async def run():
        client = InferenceGRPCClient("127.0.0.1:8081", timeout=120)
        return await client.infer(InferRequest(MODEL, [InferInput("image", [1], "BYTES", [photo("croco.jpg")])]))

    response = asyncio.run(run())
    return labels_right(next(o for o in response.outputs if o.name == "label").as_numpy()[:, 0], ["croco.jpg"])


def grpc_triton() -> bool:
    """tritonclient's gRPC stubs clash with kserve's in one process: its own process."""
    code = (
        "import sys, numpy as np, tritonclient.grpc as g\n"
        "c = g.InferenceServerClient('127.0.0.1:8081')\n"
        "t = g.InferInput('image', [1], 'BYTES')\n"
        f"t.set_data_from_numpy(np.array([open({str(ROOT / 'samples' / 'dog2.jpg')!r}, 'rb').read()], dtype=object))\n"
        f"print(c.infer({MODEL!r}, [t]).as_numpy('label')[0, 0].decode())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if out.returncode:
        raise RuntimeError(out.stderr.strip().splitlines()[-1])
    return out.stdout.strip() in labelled_photos()["dog2.jpg"]


RUNS = {"oip_json_one": lambda: oip_json(["bus.jpg"]), "oip_json_many": lambda: oip_json(TWO),
        "oip_binary": oip_binary, "v1": v1, "grpc_kserve": grpc_kserve, "grpc_triton": grpc_triton}  # fmt: skip


def outcome(check: str) -> tuple[str, str]:
    try:
        return ("ok" if RUNS[check]() else "wrong labels"), ""
    except Exception as exc:  # what the wrapper answered, for the failure message
        return "fails", f"{type(exc).__name__}: {str(exc)[:200]}"


@pytest.mark.parametrize(
    "protocol",
    # v2, as the shipped InferenceService sets it, in make test; the others in make test-slow
    [p if p == "v2" else pytest.param(p, marks=pytest.mark.slow) for p in PROTOCOLS],
)
def test_every_client_through_the_wrapper_under_each_protocol_version(pod, protocol):
    wrapper = Wrapper(pod, protocol)
    try:
        ready = wrapper.wait_ready()
        base = "http://127.0.0.1:8080"
        assert requests.get(f"{base}/v2/models/{MODEL}/ready", timeout=10).json()["ready"] is True
        assert requests.get(f"{base}/v1/models/{MODEL}", timeout=10).json()["ready"] is True
        assert requests.get(f"{base}/v2/models/{MODEL}", timeout=10).json()["name"] == MODEL  # metadata
        got = {check: outcome(check) for check in RUNS}
        assert {c: o for c, (o, _) in got.items()} == PROTOCOLS[protocol], got
        print(f"{protocol}: ready {ready - wrapper.started:.1f} s after the wrapper started "
              f"({ready - pod['start']:.1f} s after TorchServe)")  # fmt: skip
    finally:
        wrapper.stop()


def test_a_bad_image_fails_alone_and_the_message_survives_the_wrapper(pod):
    wrapper = Wrapper(pod, "v2")
    try:
        wrapper.wait_ready()

        def infer(data: bytes):
            body = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(data)]}]}
            return requests.post(f"http://127.0.0.1:8080/v2/models/{MODEL}/infer", json=body, timeout=120)

        with ThreadPoolExecutor(4) as pool:
            bad = pool.submit(infer, b"not an image, just text")
            goods = {n: pool.submit(infer, photo(n)) for n in ["dog1.jpg", "croco.jpg", "kitten.jpg"]}
        # KServe's wrapper answers any non-2xx from TorchServe with 500; the handler's message survives in it
        assert bad.result().status_code == 500 and "input element 0 of 1: The body is not an image" in bad.result().text
        for name, good in goods.items():
            assert good.result().status_code == 200
            assert json.loads(good.result().text)["outputs"][0]["data"][0] in labelled_photos()[name]
    finally:
        wrapper.stop()


def test_the_pod_config_refuses_registration_and_serves_metrics(pod):
    assert requests.post("http://127.0.0.1:8086/models", params={"url": f"{MODEL}.mar"}, timeout=30).status_code in (
        400, 403, 405)  # fmt: skip
    metrics = requests.get("http://127.0.0.1:8082/metrics", timeout=30)
    assert metrics.status_code == 200 and "ts_inference_requests_total" in metrics.text


def test_the_docs_table_is_this_tests_table():
    text = (ROOT / "docs" / "KUBERNETES.md").read_text()
    for what, check in CHECKS.items():
        row = f"| {what} | " + " | ".join(PROTOCOLS[p][check] for p in PROTOCOLS) + " |"
        assert row in text, row


def test_bundle_layout_and_config(pod):
    bundle = pod["mount"]
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
    assert props["model_store"] == f"{bundle}/model-store"  # where the wrapper looks for the archive
    ports = {int(v.rsplit(":", 1)[1]) for k, v in props.items() if k.endswith("_address") and ":" in v.split("//")[-1]}
    ports |= {int(props["grpc_inference_port"]), int(props["grpc_management_port"])}
    assert not ports & {8080, 8081}  # the wrapper's
    snapshot = json.loads(props["model_snapshot"])["models"][MODEL]["1.0"]
    assert (snapshot["marName"], snapshot["batchSize"], snapshot["minWorkers"]) == (f"{MODEL}.mar", 8, 1)
