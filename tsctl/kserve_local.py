"""A local KServe model server (python -m handlers.kserve) for `make serve SERVER=kserve`, tests
and benchmarks: its own ports, work folder, pid file and log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests

from tsctl.local_server import free_port


class KServeServer:
    """One model server on 127.0.0.1 serving `model_dir` (a .mar, or a folder holding one)."""

    def __init__(self, folder: Path, model_dir: Path, model_name: str | None = None, http_port: int | None = None,
                 grpc_port: int | None = None, python: str = sys.executable, env: dict | None = None,
                 extra_args: tuple = (), runtime_args: list | None = None):  # fmt: skip
        """`runtime_args`: a ServingRuntime container's args (python -m handlers.kserve ...), run as
        KServe would run them, with this server's folder, mount and ports in place of the pod's."""
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.model_dir, self.model_name = Path(model_dir), model_name
        self.http_port, self.grpc_port = http_port or free_port(), grpc_port or free_port()
        self.python, self.env, self.extra_args = python, env or {}, tuple(extra_args)
        self.pid_file, self.log_file = self.folder / "kserve.pid", self.folder / "kserve.log"
        self.runtime_args = runtime_args
        self.ready_after_s = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def command(self) -> list[str]:
        if self.runtime_args is not None:
            pod = {"/mnt/models": str(self.model_dir), "/tmp/models": str(self.folder / "work"),
                   "{{.Name}}": self.model_name or "model", "=8080": f"={self.http_port}",
                   "=8081": f"={self.grpc_port}"}  # fmt: skip
            args = list(self.runtime_args[1:])  # after "python"
            for pod_value, here in pod.items():
                args = [a.replace(pod_value, here) for a in args]
            return [self.python, *args, "--host", "127.0.0.1", *map(str, self.extra_args)]
        cmd = [self.python, "-m", "handlers.kserve", "--model_dir", str(self.model_dir), "--work_dir",
               str(self.folder / "work"), "--host", "127.0.0.1", "--http_port", str(self.http_port),
               "--grpc_port", str(self.grpc_port)]  # fmt: skip
        if self.model_name:
            cmd += ["--model_name", self.model_name]
        return [*cmd, *map(str, self.extra_args)]

    def start(self, timeout_s: float = 240, progress=None) -> KServeServer:
        """Start it detached and wait until the model is ready; raise with the log's tail if it dies."""
        started = time.monotonic()
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env={**os.environ, **self.env}, start_new_session=True)  # fmt: skip
        self.pid_file.write_text(str(process.pid))
        last_note = started
        while time.monotonic() - started < timeout_s:
            if process.poll() is not None:
                raise RuntimeError(f"the KServe server exited ({process.returncode}):\n{self.log_tail()}")
            name = self.ready_model()
            if name:
                self.model_name = name
                self.ready_after_s = round(time.monotonic() - started, 1)
                return self
            if progress and time.monotonic() - last_note > 10:
                progress(f"  still loading ({time.monotonic() - started:.0f} s): choosing the engine for this host")
                last_note = time.monotonic()
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"the KServe server was not ready within {timeout_s:.0f} s:\n{self.log_tail()}")

    def ready_model(self) -> str | None:
        """The served model's name once it is ready, else None."""
        try:
            models = requests.get(f"{self.url}/v1/models", timeout=2).json()["models"]
            if models and requests.get(f"{self.url}/v2/models/{models[0]}/ready", timeout=2).status_code == 200:
                return models[0]
        except (requests.RequestException, ValueError, KeyError):
            pass
        return None

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        return pid if psutil.pid_exists(pid) else None

    def stop(self, timeout_s: float = 30) -> bool:
        """SIGTERM (KServe's graceful shutdown), then SIGKILL; False when nothing ran."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        try:
            process = psutil.Process(pid)
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except psutil.TimeoutExpired:
                process.kill()
                process.wait(10)
        except psutil.NoSuchProcess:
            pass
        self.pid_file.unlink(missing_ok=True)
        return True

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def health(self) -> dict:
        return requests.get(f"{self.url}/v2/models/{self.model_name}/health", timeout=10).json()


def main(argv: list[str] | None = None) -> int:
    """`make serve SERVER=kserve` and `make stop`: start (and wait) or stop the one in .tsctl/kserve."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tsctl.kserve_local")
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--model_dir", help="a .mar, or a folder holding one")
    parser.add_argument("--folder", default=".tsctl/kserve")
    parser.add_argument("--http_port", type=int, default=8080)
    parser.add_argument("--grpc_port", type=int, default=8081)
    args = parser.parse_args(argv)
    server = KServeServer(Path(args.folder), Path(args.model_dir or "."), http_port=args.http_port,
                          grpc_port=args.grpc_port)  # fmt: skip
    if args.action == "stop":
        if server.stop():
            print("Stopped the KServe model server.")
        return 0
    if server.pid() is not None:
        print(f"A KServe model server already runs (pid {server.pid()}); make stop first.")
        return 1
    for port in (args.http_port, args.grpc_port):
        try:
            requests.get(f"http://127.0.0.1:{port}/", timeout=1)
            print(f"Port {port} is taken (TorchServe? make stop first).")
            return 1
        except requests.ConnectionError:
            pass
        except requests.RequestException:
            print(f"Port {port} is taken (make stop first).")
            return 1
    print(f"Starting KServe's model server with {args.model_dir} (log: {server.log_file}) ...")
    try:
        server.start(progress=print)
    except (RuntimeError, TimeoutError) as exc:
        print(exc)
        return 1
    print(f"Ready in {server.ready_after_s} s: {server.model_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
