"""A real TorchServe, started once per session from a .mar built from the default checkpoint."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT
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
