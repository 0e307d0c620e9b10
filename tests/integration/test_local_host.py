"""TorchServe on a host as `make serve` and `make stop` run it (tsctl serve, tsctl stop): a
restart serves what was promoted, with its workers and batch settings; stop stops this work
folder's server and leaves another one on the host alone; a start that fails says why within
seconds, with the last lines of the logs and where they are."""

from __future__ import annotations

import json
import re
import shutil
import socket
import time

import pytest

from tests.conftest import IMAGES, ROOT
from tests.integration.conftest import build_mar
from tsctl import serve as local
from tsctl.client import Client
from tsctl.local_server import TorchServe, free_port

pytestmark = pytest.mark.integration
MODEL = "efficientnet_lite0"


def host_config(tmp_path, ports: dict | None = None):
    """config.properties as shipped, on free ports (this test must not take 8080-8082)."""
    ports = ports or {k: free_port() for k in ("inference", "management", "metrics", "grpc", "grpc_mgmt")}
    text = (ROOT / "config.properties").read_text()
    for key in ("inference", "management", "metrics"):
        text = re.sub(rf"^{key}_address=http://127.0.0.1:\d+$", f"{key}_address=http://127.0.0.1:{ports[key]}",
                      text, flags=re.M)  # fmt: skip
    text = re.sub(r"^grpc_inference_port=\d+$", f"grpc_inference_port={ports['grpc']}", text, flags=re.M)
    text = re.sub(r"^grpc_management_port=\d+$", f"grpc_management_port={ports['grpc_mgmt']}", text, flags=re.M)
    text = text.replace("metrics_config=metrics.yaml", f"metrics_config={ROOT / 'metrics.yaml'}")
    text += f"initial_worker_port={free_port() // 100 * 100 % 40000 + 20000}\n"
    (tmp_path / "config.properties").write_text(text)
    return tmp_path / "config.properties", ports


def client_for(workdir, ports) -> Client:
    return Client(f"http://127.0.0.1:{ports['inference']}", f"http://127.0.0.1:{ports['management']}",
                  workdir / "key_file.json")  # fmt: skip


@pytest.fixture(scope="module")
def store(default_checkpoint, tmp_path_factory):
    store = tmp_path_factory.mktemp("host-store")
    build_mar(default_checkpoint, store, MODEL, "1.0", ["batchSize=4", "maxBatchDelay=10"])
    return store


@pytest.fixture(scope="module")
def archives(store, default_checkpoint, tmp_path_factory):
    v2 = tmp_path_factory.mktemp("v2")
    build_mar(default_checkpoint, v2, MODEL, "2.0", ["batchSize=2", "maxBatchDelay=30"])
    return store, v2 / f"{MODEL}.mar"


@pytest.mark.slow
def test_a_restart_serves_what_was_promoted_and_stop_leaves_other_servers_alone(archives, tmp_path, bare):
    store, v2 = archives
    other = TorchServe(tmp_path / "other", store, f"{MODEL}.mar", python=bare).start([MODEL])  # another checkout's
    try:
        work = tmp_path / "work"
        work.mkdir()
        config, ports = host_config(tmp_path)
        local.serve(config, store, [store / f"{MODEL}.mar"], work, workers=1)
        client = client_for(work, ports)
        shutil.copy(v2, store / f"{MODEL}-v2.0.mar")  # as tsctl rollout stages it
        client.register(f"{MODEL}-v2.0.mar", workers=1, model_name=MODEL)
        client.set_default(MODEL, "2.0")
        client.scale(MODEL, "2.0", 2)
        assert local.stop(work) is True and local.running_pid(work) is None
        assert other.client.predict(MODEL, (IMAGES / "dog1.jpg").read_bytes()).status_code == 200  # left alone
        saved = json.loads(local.state_path(work).read_text())["models"][MODEL]
        assert saved["2.0"]["defaultVersion"] and saved["2.0"]["minWorkers"] == 2 and saved["2.0"]["batchSize"] == 2
        log = []
        local.serve(config, store, [store / f"{MODEL}.mar"], work, workers=1, log=log.append)
        assert any("restoring efficientnet_lite0" in line and "v2.0 (default) x2" in line for line in log), log
        assert client.default_version(MODEL) == "2.0"
        described = {d["modelVersion"]: d for d in client.management("GET", f"/models/{MODEL}/all").json()}
        assert len(described["2.0"]["workers"]) == 2 and described["2.0"]["batchSize"] == 2
        assert client.predict(MODEL, (IMAGES / "croco.jpg").read_bytes()).json()[0]["label"] == "African crocodile"
        local.stop(work)
        fresh = local.plan([store / f"{MODEL}.mar"], 1, work, fresh=True, log=log.append)  # what FRESH=1 starts
        assert list(fresh[MODEL]) == ["1.0"] and fresh[MODEL]["1.0"]["batchSize"] == 4
    finally:
        other.stop()


def test_a_start_that_fails_is_reported_within_seconds_with_the_logs(store, tmp_path):
    config, ports = host_config(tmp_path)
    with socket.socket() as taken:  # another program holds the inference port
        taken.bind(("127.0.0.1", ports["inference"]))
        taken.listen()
        start = time.monotonic()
        with pytest.raises(local.StartFailed) as failed:
            local.serve(config, store, [store / f"{MODEL}.mar"], tmp_path / "w1", workers=1)
        assert time.monotonic() - start < 30
    assert "TorchServe exited while starting" in str(failed.value) and "All logs:" in str(failed.value)
    assert "ts_log.log" in str(failed.value)
    broken = tmp_path / "broken-store"
    broken.mkdir()
    shutil.copy(store / f"{MODEL}.mar", broken / "broken.mar")
    _replace_in_archive(broken / "broken.mar", "image_classifier.py", b"raise RuntimeError('a broken handler')\n")
    start = time.monotonic()
    with pytest.raises(local.StartFailed) as failed:
        local.serve(config, broken, [broken / "broken.mar"], tmp_path / "w2", workers=1)
    assert time.monotonic() - start < 60 and "worker failed to start" in str(failed.value)
    assert "a broken handler" in str(failed.value)  # the model log's last lines name the cause
    local.stop(tmp_path / "w2")


def _replace_in_archive(mar, name: str, content: bytes) -> None:
    import zipfile

    with zipfile.ZipFile(mar) as z:
        entries = {i.filename: z.read(i.filename) for i in z.infolist()}
    entries[name] = content
    with zipfile.ZipFile(mar, "w") as z:
        for filename, data in entries.items():
            z.writestr(filename, data)
