"""TorchServe's REST APIs as a Python client, with token authorization handled."""

from __future__ import annotations

import json
import time
from pathlib import Path

import requests

from tsctl.keys import bearer, read_keys

UNREGISTER_ATTEMPTS = 4


class ApiError(RuntimeError):
    """A non-2xx answer, with the server's own reason."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class Client:
    def __init__(self, inference_url: str, management_url: str, key_file: Path):
        self.inference_url = inference_url.rstrip("/")
        self.management_url = management_url.rstrip("/")
        self.key_file = Path(key_file)
        self.session = requests.Session()

    def _keys(self):
        try:
            return read_keys(self.key_file)
        except FileNotFoundError:  # TorchServe removes it when it stops: as good as no answer
            raise requests.ConnectionError(
                f"{self.key_file} does not exist: is TorchServe running (it writes the file where it starts)?"
            ) from None

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
            raise ApiError(f"{method} {url} -> {resp.status_code}: {_reason(resp)}", resp.status_code)
        return resp

    def refresh_key(self, kind: str) -> None:
        """Have TorchServe issue a new inference or management key (it rewrites key_file.json)."""
        resp = self.session.get(
            f"{self.management_url}/token", params={"type": kind}, headers=bearer(self._keys().api), timeout=30
        )
        if resp.status_code >= 400:
            raise ApiError(f"refreshing the {kind} key -> {resp.status_code}: {_reason(resp)}", resp.status_code)

    def management(self, method: str, path: str, **kwargs) -> requests.Response:
        return self._call(method, f"{self.management_url}{path}", "management", **kwargs)

    def inference(self, method: str, path: str, **kwargs) -> requests.Response:
        return self._call(method, f"{self.inference_url}{path}", "inference", **kwargs)

    def predict(self, model: str, image: bytes, version: str | None = None, **kwargs) -> requests.Response:
        path = f"/predictions/{model}" + (f"/{version}" if version else "")
        return self.inference("POST", path, data=image, **kwargs)

    def default_version(self, model: str) -> str:
        return self.management("GET", f"/models/{model}").json()[0]["modelVersion"]

    def versions(self, model: str) -> list[str]:
        return [d["modelVersion"] for d in self.management("GET", f"/models/{model}/all").json()]

    def register(
        self,
        url: str,
        workers: int = 1,
        model_name: str | None = None,
        batch_size: int | None = None,
        max_batch_delay: int | None = None,
    ) -> str:
        """Register an archive (a file name in the model store); batch settings other than the
        archive's own where given."""
        params = {"url": url, "initial_workers": workers, "synchronous": "true"}
        if model_name:
            params["model_name"] = model_name
        if batch_size:
            params["batch_size"] = batch_size
        if max_batch_delay:
            params["max_batch_delay"] = max_batch_delay
        return self.management("POST", "/models", params=params, timeout=900).json().get("status", "")

    def scale(self, model: str, version: str | None, min_worker: int, max_worker: int | None = None) -> str:
        path = f"/models/{model}" + (f"/{version}" if version else "")
        params = {"min_worker": min_worker, "max_worker": max_worker or min_worker, "synchronous": "true"}
        return self.management("PUT", path, params=params, timeout=900).json().get("status", "")

    def set_default(self, model: str, version: str) -> str:
        return self.management("PUT", f"/models/{model}/{version}/set-default").json().get("status", "")

    def unregister(self, model: str, version: str | None = None) -> str:
        """Unregister a version (or the model). TorchServe 0.12 sometimes answers 500
        ConcurrentModificationException when requests arrive while it unregisters: retried, and a
        404 after such an answer means the first attempt went through."""
        path = f"/models/{model}" + (f"/{version}" if version else "")
        raced = False
        for attempt in range(UNREGISTER_ATTEMPTS):
            try:
                return self.management("DELETE", path, timeout=300).json().get("status", "")
            except ApiError as exc:
                if raced and exc.status == 404:
                    return f"{model} {version or ''} unregistered".strip()
                if exc.status != 500 or "ConcurrentModification" not in str(exc) or attempt == UNREGISTER_ATTEMPTS - 1:
                    raise
                raced = True
                time.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")

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
