"""A local TorchServe for tests and benchmarks: its own free ports, work dir, pid file and worker sockets."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

import psutil
import requests

from tsctl.client import Client
from tsctl.keys import bearer, read_keys

LAUNCH = "import sys; from ts.model_server import start; sys.exit(start())"
# The project's production logging (no per-request DEBUG lines); None = TorchServe's built-in file.
LOG_CONFIG = Path(__file__).resolve().parent / "log4j2.xml"  # package data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bare_python(root: Path) -> Path:
    """A Python that sees this venv's packages (torch, timm, ts, ...) but not this project.

    A plain path in a .pth file does not process the .pth files inside it, so the editable
    install of this package stays invisible: a .mar served with it must carry its own code.
    """
    if not (root / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
        purelib = Path(
            subprocess.check_output(
                [str(root / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                text=True,
            ).strip()
        )
        (purelib / "project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return root / "bin" / "python"


class TorchServe:
    """Start/stop one TorchServe with token auth on; `client` talks to it with the keys."""

    def __init__(
        self,
        workdir: Path,
        model_store: Path,
        models: str,
        python: Path = Path(sys.executable),
        extra_config: dict | None = None,
        log_config: Path | None = LOG_CONFIG,
    ):
        self.workdir = Path(workdir)
        self.model_store = Path(model_store)
        self.python = python
        self.log_args = ["--log-config", str(log_config)] if log_config else []
        self.ports = {k: free_port() for k in ("inference", "management", "metrics", "grpc", "grpc_mgmt")}
        self.config = {
            "inference_address": f"http://127.0.0.1:{self.ports['inference']}",
            "management_address": f"http://127.0.0.1:{self.ports['management']}",
            "metrics_address": f"http://127.0.0.1:{self.ports['metrics']}",
            "grpc_inference_address": "127.0.0.1",
            "grpc_management_address": "127.0.0.1",
            "grpc_inference_port": self.ports["grpc"],
            "grpc_management_port": self.ports["grpc_mgmt"],
            # worker sockets are /tmp/.ts.sock.<port>: keep clear of any other TorchServe here
            "initial_worker_port": random.randrange(20000, 60000, 100),
            "model_store": str(self.model_store),
            "load_models": models,
            "enable_model_api": "true",
            "allowed_urls": f"file://{self.model_store.resolve()}/[^/]*[.]mar",  # as config.properties
            "disable_token_authorization": "false",
            "max_request_size": 34603008,  # as config.properties
            "metrics_mode": "prometheus",
            "default_workers_per_model": 1,
            **(extra_config or {}),
        }
        self.env = {**os.environ, "TMPDIR": str(self.workdir / "tmp")}  # TorchServe's pid file lives there
        self.env.pop("PYTHONPATH", None)
        self.inference_url = self.config["inference_address"]
        self.management_url = self.config["management_address"]
        self.client = Client(self.inference_url, self.management_url, self.workdir / "key_file.json")

    @property
    def keys(self):
        return read_keys(self.workdir / "key_file.json")

    def start(self, wait_for: list[str], timeout_s: float = 240) -> TorchServe:
        (self.workdir / "tmp").mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "config.properties"
        conf.write_text("".join(f"{k}={v}\n" for k, v in self.config.items()))
        subprocess.run(
            [
                str(self.python),
                "-c",
                LAUNCH,
                "--start",
                "--ncs",
                "--ts-config",
                str(conf),
                "--model-store",
                str(self.model_store),
            ]
            + self.log_args,
            cwd=self.workdir,
            env=self.env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        try:
            for model in wait_for:
                self.client.wait_ready(model, timeout_s)
        except TimeoutError:
            print(self.log_tail(), file=sys.stderr)
            self.stop()
            raise
        return self

    def _pid(self) -> int | None:
        pid_file = self.workdir / "tmp" / ".model_server.pid"
        return int(pid_file.read_text().split()[0]) if pid_file.exists() else None

    def stop(self) -> None:
        pid = self._pid()
        subprocess.run(
            [str(self.python), "-c", LAUNCH, "--stop"],
            cwd=self.workdir,
            env=self.env,
            stdout=subprocess.DEVNULL,
            check=False,
        )
        if pid:
            try:
                proc = psutil.Process(pid)
                children = proc.children(recursive=True)
                proc.wait(timeout=60)
                for child in children:
                    if child.is_running():
                        child.kill()
            except psutil.Error:
                pass

    def log_tail(self, n: int = 60) -> str:
        out = []
        for name in ("model_log.log", "ts_log.log"):
            path = self.workdir / "logs" / name
            if path.exists():
                out.append(f"--- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-n:]))
        return "\n".join(out)

    def post(self, model: str, timeout: float = 60, token: str | None = "inference", **kwargs) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if token == "inference":
            headers.update(bearer(self.keys.inference))
        return requests.post(f"{self.inference_url}/predictions/{model}", headers=headers, timeout=timeout, **kwargs)

    def worker_pids(self, model: str) -> list[int]:
        desc = self.client.management("GET", f"/models/{model}").json()[0]
        return sorted(w["pid"] for w in desc["workers"])
