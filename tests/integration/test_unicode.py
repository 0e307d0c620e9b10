"""Through a real TorchServe: arbitrary Unicode in every place user text reaches an error
message answers that request's own 4xx (the message intact in the JSON body), its good
neighbours in the same batch answer 200, and the worker process never changes."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.conftest import IMAGES, labelled_photos
from tests.integration.conftest import MODEL

pytestmark = pytest.mark.integration
GOOD = ["dog1.jpg", "croco.jpg"]
# Text with at least one non-ASCII character; what HTTP can carry in a header is narrower
UNICODE = st.text(min_size=1, max_size=40).filter(lambda t: not t.isascii())
HEADER_TEXT = st.text(
    st.characters(min_codepoint=0x21, exclude_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=20
).filter(lambda t: not t.isascii())


EXPECTED_TYPE = {"json key": "missing_image_field", "json topk": "bad_topk", "header topk": "bad_topk"}


def _photo(name: str) -> bytes:
    return (IMAGES / name).read_bytes()  # not a fixture: Hypothesis would print its megabytes


def _json(server, doc):
    return server.post(MODEL, data=json.dumps(doc), headers={"Content-Type": "application/json"})


def bad_requests(server, text: str, header_text: str, photo: bytes) -> dict:
    """One request per place user text reaches a message; each must be refused."""
    b64 = base64.b64encode(photo).decode()
    raw = text.encode("utf-8", "surrogatepass")
    return {
        "text body": lambda: server.post(MODEL, data=raw, headers={"Content-Type": "text/plain; charset=utf-8"}),
        "binary body": lambda: server.post(MODEL, data=raw, headers={"Content-Type": "application/octet-stream"}),
        "json key": lambda: _json(server, {text: "x"}),
        "json image value": lambda: _json(server, {"image": text}),
        "json topk": lambda: _json(server, {"image": b64, "topk": text}),
        "header topk": lambda: server.post(MODEL, data=photo, headers={"X-TopK": header_text.encode("utf-8")}),
        "multipart field": lambda: server.post(MODEL, files={text: ("f", raw, "application/octet-stream")}),
    }


# No shrinking: each example is a round trip through TorchServe, and a worker that died
# takes seconds to come back; the failing text is reported as generated.
@settings(
    max_examples=12,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(text=UNICODE, header_text=HEADER_TEXT)
def test_unicode_in_any_field_is_refused_alone_and_never_restarts_the_worker(server, text, header_text):
    pids = server.worker_pids(MODEL)
    bad = bad_requests(server, text, header_text, _photo("dog1.jpg"))
    with ThreadPoolExecutor(len(bad) + len(GOOD)) as pool:  # one TorchServe batch of 8 (batchSize 8)
        bad_futures = {name: pool.submit(send) for name, send in bad.items()}
        good_futures = {name: pool.submit(server.post, MODEL, data=_photo(name)) for name in GOOD}
    for name, future in bad_futures.items():
        resp = future.result()
        assert 400 <= resp.status_code < 500, (name, text, resp.status_code, resp.text[:300])
        body = resp.json()
        assert body["code"] == resp.status_code and body["type"] and body["message"], (name, body)
        if name in EXPECTED_TYPE:
            assert body["type"] == EXPECTED_TYPE[name], (name, body)
    for name, future in good_futures.items():
        resp = future.result()
        assert resp.status_code == 200, (name, text, resp.text[:300])
        assert resp.json()[0]["label"] in labelled_photos()[name], (name, resp.json()[0])
    assert server.worker_pids(MODEL) == pids


def test_the_full_message_keeps_its_unicode_in_the_json_body(server):
    resp = _json(server, {"h\u00e9llo \u2603": "x"})
    assert resp.status_code == 400
    body = resp.json()
    assert body["type"] == "missing_image_field" and "h\u00e9llo \u2603" in body["message"]
