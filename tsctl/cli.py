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

    def _call(self, method: str, url: str, key: str, **kwargs) -> requests.Response:
        resp = self.session.request(method, url, headers=bearer(key), timeout=kwargs.pop("timeout", 60), **kwargs)
        if resp.status_code >= 400:
            raise ApiError(f"{method} {url} -> {resp.status_code}: {_reason(resp)}")
        return resp

    def management(self, method: str, path: str, **kwargs) -> requests.Response:
        return self._call(method, f"{self.management_url}{path}", self._keys().management, **kwargs)

    def predict(self, model: str, image: bytes, version: str | None = None) -> requests.Response:
        path = f"/predictions/{model}" + (f"/{version}" if version else "")
        return self._call("POST", f"{self.inference_url}{path}", self._keys().inference, data=image)

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
    p = sub.add_parser("models", help="list registered models")
    p = sub.add_parser("describe", help="describe a model (with the handler's own health)")
    p.add_argument("model")
    p.add_argument("--version")
    args = parser.parse_args(argv)
    client = Client(args.inference_url, args.management_url, args.key_file)
    try:
        return COMMANDS[args.command](client, args)
    except (ApiError, TimeoutError, FileNotFoundError, requests.RequestException) as exc:
        print(f"tsctl: {exc}", file=sys.stderr)
        return 1


def _wait(client: Client, args) -> int:
    desc = client.wait_ready(args.model, args.timeout)
    print(f"{args.model} v{desc.get('modelVersion')} ready ({len(desc.get('workers', []))} workers)")
    return 0


def _predict(client: Client, args) -> int:
    for path in args.files:
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


COMMANDS = {"wait": _wait, "predict": _predict, "models": _models, "describe": _describe}

if __name__ == "__main__":
    sys.exit(main())
