"""Through a real TorchServe (batchSize 8, maxBatchDelay 300 ms): bad inputs answer their own
4xx with a JSON body, good requests batched with them answer 200, and no worker restarts."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import labelled_photos
from tests.corpus import bad_cases, edge_case_encodings
from tests.integration.conftest import MODEL

pytestmark = pytest.mark.integration
GOOD = ["dog1.jpg", "croco.jpg", "dog2.jpg"]


def send(server, body, headers=None):
    headers = dict(headers or {})
    if isinstance(body, (dict, list)):
        return server.post(MODEL, data=json.dumps(body), headers={"Content-Type": "application/json", **headers})
    if isinstance(body, str):
        headers.setdefault("Content-Type", "text/plain")
        return server.post(MODEL, data=body.encode(), headers=headers)
    headers.setdefault("Content-Type", "application/octet-stream")
    return server.post(MODEL, data=body, headers=headers)


def test_corpus_through_the_server_with_good_neighbours_and_no_restart(server, photos):
    pids = server.worker_pids(MODEL)
    cases = bad_cases(photos["dog1.jpg"])
    failures = []
    with ThreadPoolExecutor(4) as pool:
        for case in cases:
            bad = pool.submit(send, server, case.body, case.headers)
            goods = [pool.submit(send, server, photos[n]) for n in GOOD]
            resp = bad.result()
            try:
                body = resp.json()
            except ValueError:
                body = {"raw": resp.text[:200]}
            if (resp.status_code, body.get("type")) != (case.code, case.type) or body.get("code") != case.code:
                failures.append((case.name, resp.status_code, body))
            for name, good in zip(GOOD, goods):
                r = good.result()
                if r.status_code != 200 or r.json()[0]["label"] != labelled_photos()[name][0]:
                    failures.append((f"neighbour {name} of {case.name}", r.status_code, r.text[:200]))
    assert not failures, failures
    assert server.worker_pids(MODEL) == pids  # the same worker process served everything


def test_edge_case_encodings_through_the_server(server, photos):
    encodings = edge_case_encodings(photos["dog2.jpg"])
    with ThreadPoolExecutor(4) as pool:
        responses = dict(zip(encodings, pool.map(lambda b: send(server, b), encodings.values())))
    for name, resp in responses.items():
        assert resp.status_code == 200, (name, resp.text)
        assert resp.json()[0]["label"] == "Brittany spaniel", (name, resp.json()[0])


def test_body_over_the_handler_limit_is_413_with_json(server):
    resp = send(server, b"\xff\xd8" + bytes(25 * 1024 * 1024))
    assert resp.status_code == 413
    assert resp.json()["type"] == "body_too_large" and "25165824" in resp.json()["message"]


def test_body_over_torchserve_max_request_size_is_refused_by_the_frontend(server):
    resp = send(server, b"\xff\xd8" + bytes(34 * 1024 * 1024))
    assert resp.status_code == 413
