"""A real TorchServe, started once per session from a .mar built from the default checkpoint, and
KServe's model server on the same archive; `endpoint` runs a test against each."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import ROOT
from tsctl.kserve_local import KServeServer
from tsctl.local_server import TorchServe, bare_python

MODEL = "efficientnet_lite0"


def pytest_collection_modifyitems(items):
    if shutil.which("java") is None:
        skip = pytest.mark.skip(reason="TorchServe needs Java 17 (see README)")
        for item in items:
            if "integration" in str(item.fspath):
                item.add_marker(skip)


METRICS_YAML = ROOT / "metrics.yaml"


def build_mar(checkpoint, store, name, version="1.0", sets=(), handler=None, onnx=False, extra=()):
    """`make mar` for a test. Without `onnx` the archive serves with torch alone: tests of
    anything but the backends skip the export and the backend selection at load."""
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "build_mar.py"),
        "--checkpoint",
        str(checkpoint),
        "--model-name",
        name,
        "--version",
        version,
        "--export-path",
        str(store),
    ]
    if handler:
        cmd += ["--handler", str(handler)]
    if not onnx:
        cmd.append("--no-onnx")
    for s in sets:
        cmd += ["--set", s]
    subprocess.run([*cmd, *map(str, extra)], check=True, stdout=subprocess.DEVNULL)
    return store / f"{name}.mar"


@pytest.fixture(scope="session")
def bare(tmp_path_factory):
    return bare_python(tmp_path_factory.mktemp("bare-venv") / "venv")


@pytest.fixture(scope="session")
def server(default_checkpoint, bare, tmp_path_factory):
    """Batches of up to 8 gathered for 300 ms, so concurrent requests share a batch."""
    store = tmp_path_factory.mktemp("model-store")
    build_mar(default_checkpoint, store, MODEL, sets=["batchSize=8", "maxBatchDelay=300"], onnx=True)
    ts = TorchServe(
        tmp_path_factory.mktemp("ts"), store, f"{MODEL}.mar", python=bare, extra_config={"metrics_config": METRICS_YAML}
    )
    ts.start([MODEL])
    yield ts
    ts.stop()


def read_only_mount(mar: Path, mount: Path) -> Path:
    """A KServe storage mount as the storage initializer leaves it (the bundle's model-store/),
    read-only as the predictor container mounts it."""
    (mount / "model-store").mkdir(parents=True)
    shutil.copy(mar, mount / "model-store" / mar.name)
    for path in (mount / "model-store" / mar.name, mount / "model-store", mount):
        path.chmod(0o444 if path.is_file() else 0o555)
    return mount


def files_under(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.fixture(scope="session")
def kserve_server(server, tmp_path_factory):
    """KServe's model server on the archive `server` serves, from a storage mount as a pod has it."""
    mount = read_only_mount(server.model_store / f"{MODEL}.mar", tmp_path_factory.mktemp("mnt") / "models")
    before = files_under(mount)
    runtime = yaml.safe_load((ROOT / "deploy" / "kserve" / "base" / "servingruntime.yaml").read_text())
    args = runtime["spec"]["containers"][0]["args"]  # started as the pod starts it
    ks = KServeServer(tmp_path_factory.mktemp("kserve"), mount, MODEL, runtime_args=args).start()
    yield ks
    ks.stop()
    assert files_under(mount) == before  # nothing written to the storage mount


@dataclass
class Endpoint:
    """A server's inference API as a client sees it."""

    kind: str
    url: str
    auth: dict
    pids: Callable[[], list]

    @property
    def headers(self) -> dict:
        """A fresh dict each time: tritonclient writes its binary header into the one it is given."""
        return dict(self.auth)

    def post(self, path: str, **kwargs) -> requests.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return requests.post(f"{self.url}{path}", headers=headers, timeout=kwargs.pop("timeout", 60), **kwargs)


@pytest.fixture(scope="session", params=["torchserve", "kserve"])
def endpoint(request) -> Endpoint:
    """Each test taking it runs against TorchServe and against KServe's model server, one archive."""
    if request.param == "torchserve":
        ts = request.getfixturevalue("server")
        auth = {"Authorization": f"Bearer {ts.keys.inference}"}
        return Endpoint("torchserve", ts.inference_url, auth, lambda: ts.worker_pids(MODEL))
    ks = request.getfixturevalue("kserve_server")
    return Endpoint("kserve", ks.url, {}, lambda: [ks.pid()])


def run_make(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`make ARGS` in this checkout as a user runs it: without the variables of a make that runs
    the tests (MAKEFLAGS carries `make test-slow PYTEST_ARGS=...`, which make serve refuses)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    return subprocess.run(["make", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
