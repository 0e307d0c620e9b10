"""The hostile corpus through a real TorchServe (batchSize 8, maxBatchDelay 300 ms): each input
is sent beside good neighbours and gets its promised answer, the neighbours get theirs, and the
worker process never changes. Limits are probed at their value and one past it."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from PIL import Image

from tests.conftest import labelled_photos
from tests.hostile import MAX_REQUEST_SIZE, hostile_cases
from tests.integration.conftest import MODEL
from tests.integration.test_robustness import GOOD, send

pytestmark = pytest.mark.integration
PHOTO = "dog2.jpg"


@pytest.fixture(scope="module")
def cases(photos):
    return hostile_cases(photos[PHOTO], labelled_photos()[PHOTO][0])


def _outcome(resp) -> tuple[int, str]:
    try:
        body = resp.json()
    except ValueError:
        return resp.status_code, "(not JSON)"
    if resp.status_code == 200:
        return 200, body[0]["label"]
    return resp.status_code, body.get("type", "")


@pytest.mark.slow
def test_hostile_corpus_with_good_neighbours_and_no_restart(server, photos, cases):
    pids = server.worker_pids(MODEL)
    failures = []
    with ThreadPoolExecutor(4) as pool:
        for case in cases:
            bad = pool.submit(send, server, case.body, case.headers)
            goods = [pool.submit(send, server, photos[n]) for n in GOOD]
            code, what = _outcome(bad.result())
            if code != case.code or (case.type and what != case.type):
                failures.append((case.name, code, what))
            for name, good in zip(GOOD, goods):
                if _outcome(good.result()) != (200, labelled_photos()[name][0]):
                    failures.append((f"neighbour {name} of {case.name}", *_outcome(good.result())))
    assert not failures, failures
    assert server.worker_pids(MODEL) == pids


def _small_jpeg_b64() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buf, "JPEG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.slow
def test_limits_at_and_one_past_their_value(server, photos):
    """TorchServe's max_request_size, its header and request-line limits, and the handler's
    images per request; each probe beside a good neighbour."""
    pids = server.worker_pids(MODEL)
    url = f"{server.inference_url}/predictions/{MODEL}"
    token = {"Authorization": f"Bearer {server.keys.inference}"}
    image = _small_jpeg_b64()
    probes = {
        "request at max_request_size": (
            lambda: send(server, b"\xff\xd8" + bytes(MAX_REQUEST_SIZE - 2)),
            (413, "body_too_large"),
        ),
        "request one byte over": (lambda: send(server, b"\xff\xd8" + bytes(MAX_REQUEST_SIZE - 1)), (413, "(not JSON)")),
        "headers under 8 KiB": (lambda: send(server, photos[PHOTO], {"X-Pad": "a" * 7000}), (200, "Brittany spaniel")),
        "headers over 8 KiB": (lambda: send(server, photos[PHOTO], {"X-Pad": "a" * 9000}), (400, "")),
        "request line under 4 KiB": (
            lambda: requests.post(f"{url}?pad={'a' * 3500}", data=photos[PHOTO], headers=token, timeout=60),
            (200, "Brittany spaniel"),
        ),
        "request line over 4 KiB": (
            lambda: requests.post(f"{url}?pad={'a' * 5000}", data=photos[PHOTO], headers=token, timeout=60),
            (400, ""),
        ),
        "64 images in a request": (
            lambda: requests.post(
                f"{server.inference_url}/v1/models/{MODEL}:predict",
                headers=token,
                json={"instances": [image] * 64},
                timeout=60,
            ),
            (200, "64"),
        ),
        "65 images in a request": (
            lambda: requests.post(
                f"{server.inference_url}/v1/models/{MODEL}:predict",
                headers=token,
                json={"instances": [image] * 65},
                timeout=60,
            ),
            (413, "too_many_images"),
        ),
    }
    failures = []
    with ThreadPoolExecutor(2) as pool:
        for name, (probe, (code, what)) in probes.items():
            sent = pool.submit(probe)
            good = pool.submit(send, server, photos["croco.jpg"])
            resp = sent.result()
            if resp.status_code != code:
                failures.append((name, resp.status_code, resp.text[:120]))
            elif what == "64":
                if len(resp.json()["predictions"]) != 64:
                    failures.append((name, "rows", len(resp.json()["predictions"])))
            elif what and _outcome(resp)[1] != what:
                failures.append((name, code, _outcome(resp)))
            if _outcome(good.result()) != (200, labelled_photos()["croco.jpg"][0]):
                failures.append((f"neighbour of {name}", *_outcome(good.result())))
    assert not failures, failures
    assert server.worker_pids(MODEL) == pids
