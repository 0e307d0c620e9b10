"""tsctl's client against a stand-in management API that answers as TorchServe 0.12 does when
an unregister races live requests (500 ConcurrentModificationException, then 404)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tsctl.client import ApiError, Client


def serve(answers: list[tuple[int, dict]]):
    seen = []

    class Answer(BaseHTTPRequestHandler):
        def do_DELETE(self):  # noqa: N802 (http.server's naming)
            seen.append(self.path)
            code, body = answers.pop(0)
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "key_file.json"
    path.write_text(json.dumps({k: {"key": "k"} for k in ("inference", "management", "API")}))
    return path


RACED = (500, {"code": 500, "type": "ConcurrentModificationException"})


@pytest.mark.parametrize(
    "answers, status",
    [
        ([RACED, (200, {"status": 'Model "m" unregistered'})], 'Model "m" unregistered'),
        ([RACED, (404, {"code": 404, "message": "Model version: 2.0 does not exist"})], "m 2.0 unregistered"),
    ],
)
def test_an_unregister_that_races_live_requests_is_retried(key_file, answers, status):
    server, seen = serve(answers)
    url = f"http://127.0.0.1:{server.server_port}"
    assert Client(url, url, key_file).unregister("m", "2.0") == status
    assert seen == ["/models/m/2.0", "/models/m/2.0"]
    server.shutdown()


def test_other_failures_of_an_unregister_are_not_retried(key_file):
    server, seen = serve([(404, {"code": 404, "message": "Model not found: m"}), RACED])
    url = f"http://127.0.0.1:{server.server_port}"
    with pytest.raises(ApiError) as raised:
        Client(url, url, key_file).unregister("m", "2.0")
    assert raised.value.status == 404 and len(seen) == 1
    server.shutdown()
