"""The serving image built (`make image`: docker or podman) and the pod KServe makes for the
shipped InferenceService run from the kustomize output (scripts/kserve_pod.py): KServe's storage
code fills the /mnt/models emptyDir, then the image-classifier container runs with the
ServingRuntime's arguments, environment, probes, securityContext, resources and emptyDirs.
Through its published ports only: time to ready, every protocol the runtime lists with a
standard client, bad inputs beside good ones; then what a pod must hold: nothing written outside
its emptyDirs, a non-root process, memory within its limit under load, a killed server is an
exited container, and a restarted container serves again."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.clients import assert_acceptable, b64
from tests.conftest import ROOT
from tests.integration.conftest import run_make
from tests.integration.test_kserve_server import grpc_clients

sys.path.insert(0, str(ROOT / "scripts"))
import kserve_pod  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]
IMAGE = "ts-image-classifier:0.1.0-cpu"
NAMES = ["kitten.jpg", "dog1.jpg", "croco.jpg"]


@pytest.fixture(scope="module")
def pod(default_checkpoint, tmp_path_factory):
    try:
        engine = kserve_pod.engine()
    except RuntimeError as err:
        pytest.skip(str(err))
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl renders deploy/ (README)")
    build = run_make("image", timeout=3600)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    from kserve_bundle import write_bundle

    work = tmp_path_factory.mktemp("pod")
    bundle = write_bundle(default_checkpoint, "efficientnet_lite0", "1.0", work / "bucket", [])
    busy = [p for p in (8080, 8081) if _listening(p)]
    if busy:
        pytest.fail(f"ports {busy} are taken (make stop?): the pod publishes KServe's ports")
    pod = kserve_pod.Pod(IMAGE, f"file://{bundle}", work / "pod", engine=engine)
    pod.ready_s = pod.start()
    yield pod
    pod.stop()


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_every_protocol_the_runtime_lists_answers_through_the_published_ports(pod, photos, tmp_path):
    import tritonclient.http as triton

    from tests.clients import first_labels, triton_input

    assert pod.ready_s < 120, pod.ready_s
    assert pod.objects["ServingRuntime"]["spec"]["protocolVersions"] == ["v1", "v2", "grpc-v2"]
    name = pod.name  # the model's name is the InferenceService's ({{.Name}})
    v1 = requests.post(f"http://127.0.0.1:8080/v1/models/{name}:predict", timeout=60,
                       json={"instances": [b64(photos[n]) for n in NAMES]})  # fmt: skip
    assert v1.status_code == 200 and [p[0]["label"] for p in v1.json()["predictions"]][1] == "Labrador retriever"
    client = triton.InferenceServerClient("127.0.0.1:8080")
    for binary in (True, False):
        result = client.infer(name, [triton_input([photos[n] for n in NAMES], binary)])
        assert_acceptable(first_labels(result), NAMES)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    for which in ("triton", "kserve"):
        singles = grpc_clients(which, "127.0.0.1:8081", [ROOT / "samples" / n for n in NAMES] + [bad], name)["singles"]
        assert_acceptable([s.get("label") for s in singles[:3]], NAMES)
        assert singles[3]["status"] == "StatusCode.INVALID_ARGUMENT" and "not_an_image" in singles[3]["details"]
    with ThreadPoolExecutor(4) as pool:
        bad_rest = pool.submit(requests.post, f"http://127.0.0.1:8080/v1/models/{name}:predict", data=b"not an image",
                               timeout=60)  # fmt: skip
        goods = [pool.submit(requests.post, f"http://127.0.0.1:8080/v1/models/{name}:predict", data=photos[n],
                             timeout=60) for n in NAMES]  # fmt: skip
        assert bad_rest.result().status_code == 400 and bad_rest.result().json()["type"] == "not_an_image"
        assert_acceptable([g.result().json()[0]["label"] for g in goods], NAMES)


def test_the_pod_writes_only_its_emptydirs_runs_as_non_root_and_stays_within_its_memory(pod, photos):
    changed = subprocess.run([pod.engine, "diff", pod.container_name], capture_output=True, text=True).stdout
    mounts = json.loads(subprocess.run([pod.engine, "inspect", "--format", "{{json .Mounts}}", pod.container_name],
                                       capture_output=True, text=True, check=True).stdout)  # fmt: skip
    engine_made = {"/etc"}  # the engine's own /etc/hosts, resolv.conf, hostname
    for mount in mounts:
        path = Path(mount["Destination"])
        engine_made |= {str(path), *map(str, path.parents)}
    written = [line.split()[1] for line in changed.splitlines() if line.split()[1] not in engine_made]
    assert written == [], written  # the read-only root holds: nothing but the mount points themselves
    assert pod.exec("id", "-u").stdout.strip() == "1000"
    assert pod.exec("touch", "/opt/ts/x").returncode != 0 and pod.exec("touch", "/mnt/models/x").returncode != 0
    url = f"http://127.0.0.1:8080/v1/models/{pod.name}:predict"
    peak = 0
    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(requests.post, url, data=photos[NAMES[i % 3]], timeout=120) for i in range(400)]
        while not all(f.done() for f in futures):
            peak = max(peak, pod.memory()[0])
            time.sleep(0.5)
    assert all(f.result().status_code == 200 for f in futures)
    used, limit = pod.memory()
    pod.peak_mib, pod.limit_mib = round(max(peak, used) / 2**20), round(limit / 2**20)
    print(f"ready in {pod.ready_s:.1f} s; resident under 16 clients: {pod.peak_mib} MiB of {pod.limit_mib} MiB")
    assert limit == pytest.approx(kserve_pod._quantity_bytes(pod.spec["resources"]["limits"]["memory"]), rel=1e-3)
    assert 0 < max(peak, used) < limit  # the container's own cgroup, as its stats read it


def test_a_killed_server_is_an_exited_container_and_a_restarted_one_serves_again(pod, photos):
    assert pod.exec("ps").returncode != 0  # a minimal image: python is what there is to signal with
    kill = pod.exec("python", "-c", "import os, signal; os.kill(1, signal.SIGTERM)")
    assert kill.returncode == 0, kill.stderr  # the server is the container's process 1 (the entrypoint execs it)
    deadline = time.monotonic() + 60
    while pod.running() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not pod.running()  # no container left Ready while nothing answers: the kubelet restarts it
    start = time.monotonic()
    subprocess.run([pod.engine, "start", pod.container_name], check=True, capture_output=True)
    ready_again = pod.wait_ready(start)
    answer = requests.post(f"http://127.0.0.1:8080/v1/models/{pod.name}:predict", data=photos["dog1.jpg"], timeout=60)
    assert answer.status_code == 200 and answer.json()[0]["label"] == "Labrador retriever"
    assert ready_again < 120
    health = subprocess.run([pod.engine, "healthcheck", "run", pod.container_name], capture_output=True, text=True)
    assert health.returncode == 0, health.stdout + health.stderr  # the liveness probe's command passes


def test_a_change_of_the_handler_rebuilds_in_seconds(pod, tmp_path):
    """Layers: the Python stack before the code, so the code's change rebuilds only its own."""
    marker = ROOT / "handlers" / "kserve" / "_build_marker.py"
    marker.write_text("# a change of the code\n")
    try:
        start = time.monotonic()
        build = run_make("image", "IMAGE_TAG=layers-test", timeout=1800)
        seconds = time.monotonic() - start
    finally:
        marker.unlink()
        subprocess.run([pod.engine, "rmi", "ts-image-classifier:layers-test-cpu"], capture_output=True)
    assert build.returncode == 0, build.stdout[-3000:]
    assert "requirements.txt" not in _rebuilt_steps(build.stdout + build.stderr), seconds


def _rebuilt_steps(log: str) -> str:
    """The RUN steps the engine ran rather than took from its cache."""
    lines, out = log.splitlines(), []
    for i, line in enumerate(lines):
        if "RUN " in line and not any("Using cache" in n or "CACHED" in n for n in lines[i + 1 : i + 3]):
            out.append(line)
    return "\n".join(out)
