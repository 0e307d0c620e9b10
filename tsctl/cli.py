"""tsctl: TorchServe's REST APIs from the command line, with token authorization handled."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import requests

from tsctl.keys import bearer, read_keys


class ApiError(RuntimeError):
    """A non-2xx answer, with the server's own reason."""


class Client:
    def __init__(self, inference_url: str, management_url: str, key_file: Path):
        self.inference_url = inference_url.rstrip("/")
        self.management_url = management_url.rstrip("/")
        self.key_file = Path(key_file)
        self.session = requests.Session()

    def _keys(self):
        return read_keys(self.key_file)

    def _call(self, method: str, url: str, kind: str, **kwargs) -> requests.Response:
        timeout = kwargs.pop("timeout", 120)
        for attempt in range(2):
            key = getattr(self._keys(), kind)
            resp = self.session.request(method, url, headers=bearer(key), timeout=timeout, **kwargs)
            if attempt == 0 and resp.status_code in (400, 401) and "Token Authori" in resp.text:
                self.refresh_key(kind)  # expired: ask for a new one with the API key, then retry
                continue
            break
        if resp.status_code >= 400:
            raise ApiError(f"{method} {url} -> {resp.status_code}: {_reason(resp)}")
        return resp

    def refresh_key(self, kind: str) -> None:
        """Have TorchServe issue a new inference or management key (it rewrites key_file.json)."""
        resp = self.session.get(f"{self.management_url}/token", params={"type": kind},
                                headers=bearer(self._keys().api), timeout=30)
        if resp.status_code >= 400:
            raise ApiError(f"refreshing the {kind} key -> {resp.status_code}: {_reason(resp)}")

    def management(self, method: str, path: str, **kwargs) -> requests.Response:
        return self._call(method, f"{self.management_url}{path}", "management", **kwargs)

    def inference(self, method: str, path: str, **kwargs) -> requests.Response:
        return self._call(method, f"{self.inference_url}{path}", "inference", **kwargs)

    def predict(self, model: str, image: bytes, version: str | None = None) -> requests.Response:
        path = f"/predictions/{model}" + (f"/{version}" if version else "")
        return self.inference("POST", path, data=image)

    def default_version(self, model: str) -> str:
        return self.management("GET", f"/models/{model}").json()[0]["modelVersion"]

    def versions(self, model: str) -> list[str]:
        return [d["modelVersion"] for d in self.management("GET", f"/models/{model}/all").json()]

    def register(self, url: str, workers: int = 1, model_name: str | None = None) -> str:
        params = {"url": url, "initial_workers": workers, "synchronous": "true"}
        if model_name:
            params["model_name"] = model_name
        return self.management("POST", "/models", params=params, timeout=900).json().get("status", "")

    def scale(self, model: str, version: str | None, min_worker: int, max_worker: int | None = None) -> str:
        path = f"/models/{model}" + (f"/{version}" if version else "")
        params = {"min_worker": min_worker, "max_worker": max_worker or min_worker, "synchronous": "true"}
        return self.management("PUT", path, params=params, timeout=900).json().get("status", "")

    def set_default(self, model: str, version: str) -> str:
        return self.management("PUT", f"/models/{model}/{version}/set-default").json().get("status", "")

    def unregister(self, model: str, version: str | None = None) -> str:
        path = f"/models/{model}" + (f"/{version}" if version else "")
        return self.management("DELETE", path, timeout=300).json().get("status", "")

    def wait_ready(self, model: str, timeout_s: float) -> dict:
        """Poll describe until the model has a READY worker; returns its description."""
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while time.monotonic() < deadline:
            try:
                if self.key_file.exists():
                    desc = self.management("GET", f"/models/{model}").json()[0]
                    if any(w.get("status") == "READY" for w in desc.get("workers", [])):
                        return desc
                    last = f"workers: {[w.get('status') for w in desc.get('workers', [])]}"
                else:
                    last = f"{self.key_file} not written yet"
            except (requests.RequestException, ApiError, ValueError, KeyError) as exc:
                last = str(exc)
            time.sleep(1)
        raise TimeoutError(f"model {model} not ready after {timeout_s:.0f}s ({last})")


def _reason(resp: requests.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip()[:500] or resp.reason
    if isinstance(body, dict):
        return body.get("message") or json.dumps(body)
    return json.dumps(body)[:500]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="tsctl", description=__doc__)
    parser.add_argument("--inference-url", default="http://127.0.0.1:8080")
    parser.add_argument("--management-url", default="http://127.0.0.1:8081")
    parser.add_argument("--key-file", default="key_file.json", type=Path,
                        help="the key_file.json TorchServe wrote where it started (default: ./key_file.json)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("wait", help="wait until MODEL has a ready worker")
    p.add_argument("model")
    p.add_argument("--timeout", type=float, default=300)
    p = sub.add_parser("predict", help="classify image files; prints the top labels")
    p.add_argument("model")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--version")
    p.add_argument("--json", action="store_true", help="print the raw JSON answers")
    p.add_argument("--grpc", action="store_true", help="use the gRPC inference API instead of REST")
    p.add_argument("--grpc-target", default="127.0.0.1:7070", help="gRPC inference address")
    sub.add_parser("models", help="list registered models")
    p = sub.add_parser("describe", help="describe a model (with the handler's own health)")
    p.add_argument("model")
    p.add_argument("--version")
    p = sub.add_parser("register", help="register an archive (a file name in the model store, or a URL)")
    p.add_argument("url")
    p.add_argument("--model-name")
    p.add_argument("--workers", type=int, default=1)
    p = sub.add_parser("scale", help="set the worker count of a model version")
    p.add_argument("model")
    p.add_argument("--version")
    p.add_argument("--min", type=int, required=True, dest="min_worker")
    p.add_argument("--max", type=int, dest="max_worker")
    p = sub.add_parser("set-default", help="make VERSION the default of MODEL")
    p.add_argument("model")
    p.add_argument("version")
    p = sub.add_parser("unregister", help="unregister a model version (the default version if none is given)")
    p.add_argument("model")
    p.add_argument("version", nargs="?")
    p = sub.add_parser("rollout", help="register NEW.mar beside the default, gate it on a golden set, promote, watch")
    p.add_argument("model")
    p.add_argument("mar", type=Path)
    p.add_argument("--golden", type=Path, required=True,
                   help="folder of golden images, run through both versions (e.g. a sample of real traffic)")
    p.add_argument("--model-store", type=Path, default=Path("model_store"), help="the server's model store")
    p.add_argument("--workers", type=int, default=1, help="workers for the new version")
    p.add_argument("--min-agreement", type=float, default=0.95, help="share of golden top-1s the new version must keep")
    p.add_argument("--max-errors", type=int, default=0, help="failed golden requests allowed on the new version")
    p.add_argument("--max-p99-ratio", type=float, default=3.0, help="new p99 <= this x old p99 (+ --p99-slack-ms)")
    p.add_argument("--p99-slack-ms", type=float, default=200.0)
    p.add_argument("--watch", type=float, default=60.0, help="seconds to watch the error rate after promotion")
    p.add_argument("--max-error-rate", type=float, default=0.05, help="error rate that triggers an automatic rollback")
    p.add_argument("--grace", type=float, default=30.0, help="seconds before the old version is unregistered")
    p = sub.add_parser("rollback", help="make the previous default the default again")
    p.add_argument("model")
    p.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    client = Client(args.inference_url, args.management_url, args.key_file)
    try:
        return COMMANDS[args.command](client, args)
    except (ApiError, TimeoutError, FileNotFoundError, ValueError, RuntimeError, requests.RequestException) as exc:
        print(f"tsctl: {exc}", file=sys.stderr)
        return 1


def _wait(client: Client, args) -> int:
    desc = client.wait_ready(args.model, args.timeout)
    print(f"{args.model} v{desc.get('modelVersion')} ready ({len(desc.get('workers', []))} workers)")
    return 0


def _predict(client: Client, args) -> int:
    grpc = None
    if args.grpc:
        from tsctl.grpc_client import GrpcClient

        grpc = GrpcClient(args.grpc_target, args.grpc_target, client.key_file)
    for path in args.files:
        if grpc:
            answer = json.loads(grpc.predict(args.model, path.read_bytes(), args.version))
        else:
            answer = client.predict(args.model, path.read_bytes(), args.version).json()
        if args.json:
            print(json.dumps({"file": str(path), "prediction": answer}))
        else:
            labels = ", ".join(f"{a['label']} ({a['probability']:.2f})" for a in answer)
            print(f"{path}: {labels}")
    return 0


def _models(client: Client, args) -> int:
    print(json.dumps(client.management("GET", "/models").json(), indent=2))
    return 0


def _describe(client: Client, args) -> int:
    path = f"/models/{args.model}" + (f"/{args.version}" if args.version else "")
    print(json.dumps(client.management("GET", path, params={"customized": "true"}).json(), indent=2))
    return 0


def _register(client: Client, args) -> int:
    print(client.register(args.url, args.workers, args.model_name))
    return 0


def _scale(client: Client, args) -> int:
    print(client.scale(args.model, args.version, args.min_worker, args.max_worker))
    return 0


def _set_default(client: Client, args) -> int:
    print(client.set_default(args.model, args.version))
    return 0


def _unregister(client: Client, args) -> int:
    print(client.unregister(args.model, args.version))
    return 0


def _state(client: Client, model: str):
    from tsctl.rollout import State

    return State(client.key_file.resolve().parent / ".tsctl" / f"{model}.json")


def _rollout(client: Client, args) -> int:
    from tsctl.rollout import Gate, rollout

    gate = Gate(args.min_agreement, args.max_errors, args.max_p99_ratio, args.p99_slack_ms)
    return rollout(client, args.model, args.mar, args.golden, args.model_store, gate, args.watch,
                   args.max_error_rate, args.grace, args.workers, _state(client, args.model))


def _rollback(client: Client, args) -> int:
    from tsctl.rollout import rollback

    return rollback(client, args.model, _state(client, args.model), args.workers)


COMMANDS = {"wait": _wait, "predict": _predict, "models": _models, "describe": _describe, "register": _register,
            "scale": _scale, "set-default": _set_default, "unregister": _unregister, "rollout": _rollout,
            "rollback": _rollback}

if __name__ == "__main__":
    sys.exit(main())
