"""The second day: what a user does after the quick start, run against a real `make serve` in a
copy of this checkout, on the ports a user gets. Each step works as a user expects, or stops with
one line that says what to run: clean then serve again; the same experiment started twice; a
rollout, its rollback, the same rollout again; a new version of a saved model served by name."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.integration.test_docs import busy_ports, checkout_copy

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MODEL = "efficientnet_lite0"


def sh(work: Path, command: str, ok: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {"PATH": f"{work / '.venv' / 'bin'}:/usr/local/bin:/usr/bin:/bin", "HOME": str(work), "LANG": "C.UTF-8"}
    out = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
    out.printed = out.stdout + out.stderr
    if ok:
        assert out.returncode == 0, f"{command} failed ({out.returncode}):\n{out.printed[-3000:]}"
    return out


def default_version(work: Path) -> str:
    return json.loads(sh(work, f"scripts/tsctl describe {MODEL}").stdout)[0]["modelVersion"]


@contextlib.contextmanager
def bad_uploads(work: Path):
    """Another client posting text as images until the block ends; yields the statuses it got."""
    key = json.loads((work / "key_file.json").read_text())["inference"]["key"]
    statuses, done = [], threading.Event()

    def post():
        while not done.is_set():
            answer = requests.post(f"http://127.0.0.1:8080/predictions/{MODEL}", data=b"not an image",
                                   headers={"Authorization": f"Bearer {key}"}, timeout=30)  # fmt: skip
            statuses.append(answer.status_code)
            time.sleep(0.02)

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    try:
        yield statuses
    finally:
        done.set()
        thread.join(60)


def test_the_second_day(default_checkpoint, tmp_path):
    busy = busy_ports()
    if busy:
        pytest.fail(f"ports {busy} are taken: this test runs `make serve` on the ports a user gets")
    work = checkout_copy(tmp_path)
    try:
        sh(work, "make serve")
        sh(work, "make stop")
        # clean deletes the archives, and with them the saved state that names them
        sh(work, "make clean")
        served = sh(work, "make serve")
        assert "Prediction for samples/kitten.jpg" in served.printed and "restoring" not in served.printed

        # the same experiment started twice (its archive rebuilt from the same inputs), its archive gone when stopped
        sh(work, f"make mar CHECKPOINT=build/efficientnet_lite0.pt MODEL_NAME={MODEL} VERSION=3.0 MAR_DIR=build/v3")
        none = sh(work, f"scripts/tsctl experiment status {MODEL}", ok=False)
        assert none.returncode == 1 and "runs no experiment" in none.stderr
        for _ in range(2):
            sh(work, f"scripts/tsctl experiment start {MODEL} build/v3/{MODEL}.mar --mode split --share 0.5")
            sh(work, f"scripts/tsctl predict {MODEL} samples/kitten.jpg samples/dog.jpg")
            status = json.loads(sh(work, f"scripts/tsctl experiment status {MODEL}").stdout)
            assert status["mode"] == "split" and "pairs" not in status and "sample" not in status
            assert sum(sum(arm.values()) for arm in status["requests"].values()) >= 2
            stopped = sh(work, f"scripts/tsctl experiment stop {MODEL}")
            assert "archive" in stopped.printed and not (work / "model_store" / f"{MODEL}-v1.0-split-3.0.mar").exists()

        # a rollout, its rollback, the same rollout again: refused with what to run; then done that way
        sh(work, f"make mar CHECKPOINT=build/efficientnet_lite0.pt MODEL_NAME={MODEL} VERSION=2.0 MAR_DIR=build/v2")
        rollout = f"scripts/tsctl rollout {MODEL} build/v2/{MODEL}.mar --golden samples/ --watch 2 --grace 1"
        sh(work, rollout)
        sh(work, f"scripts/tsctl rollback {MODEL}")
        again = sh(work, rollout, ok=False)
        assert again.returncode == 1 and f"tsctl unregister {MODEL} 2.0" in again.printed
        unregistered = sh(work, f"scripts/tsctl unregister {MODEL} 2.0")
        assert f"{MODEL} v2.0 unregistered" in unregistered.stdout
        sh(work, f"make mar CHECKPOINT=build/efficientnet_lite0.pt MODEL_NAME={MODEL} VERSION=2.0 MAR_DIR=build/v2")
        assert "default is v2.0" in sh(work, rollout).printed  # the rebuilt archive is the one the store holds
        assert default_version(work) == "2.0"

        # a new version of a saved model, served by name: the saved archives stay, and it says what it serves
        sh(work, "make stop")
        saved = (work / "model_store" / f"{MODEL}.mar").read_bytes()
        served = sh(work, f"make serve CHECKPOINT=build/efficientnet_lite0.pt MODEL_NAME={MODEL} VERSION=1.1")
        assert "Overwriting" not in served.printed and (work / "model_store" / f"{MODEL}-v1.1.mar").exists()
        assert (work / "model_store" / f"{MODEL}.mar").read_bytes() == saved
        assert "v1.1 (default)" in served.printed
        assert default_version(work) == "1.1"
    finally:
        subprocess.run(["make", "stop"], cwd=work, capture_output=True, timeout=120)
