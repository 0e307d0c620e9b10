"""Standard clients against both servers of one archive (the `endpoint` fixture: TorchServe, and
KServe's model server on the request core): tritonclient (binary and JSON) and kserve's REST
client (v2 and v1), the bad-input corpus isolated per request in each protocol; and on TorchServe
the v2 JSON body that KServe's wrapper posts to /predictions/{m}."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
import requests
import tritonclient.http as triton
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from tritonclient.utils import InferenceServerException

from tests.clients import assert_acceptable, b64, first_labels, triton_input
from tests.conftest import labelled_photos
from tests.corpus import bad_cases
from tests.integration.conftest import MODEL, Endpoint

pytestmark = pytest.mark.integration
NAMES = ["kitten.jpg", "dog1.jpg", "croco.jpg", "bus.jpg"]


@pytest.fixture
def triton_client(endpoint):
    client = triton.InferenceServerClient(urlsplit(endpoint.url).netloc, concurrency=4, network_timeout=120)
    yield client
    client.close()


def plain_path(endpoint: Endpoint) -> str:
    """Where a raw image body is posted: TorchServe's /predictions, KServe v1's :predict."""
    return f"/predictions/{MODEL}" if endpoint.kind == "torchserve" else f"/v1/models/{MODEL}:predict"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_gets_the_labels(endpoint, triton_client, photos, binary):
    result = triton_client.infer(
        MODEL, [triton_input([photos[n] for n in NAMES], binary)], request_id="t-1", headers=endpoint.headers
    )
    assert_acceptable(first_labels(result), NAMES)
    assert result.as_numpy("probability").shape == (4, 5) and result.get_response()["id"] == "t-1"


def test_tritonclient_json_outputs_and_topk(endpoint, triton_client, photos):
    outputs = [triton.InferRequestedOutput(n, binary_data=False) for n in ("label", "probability")]
    result = triton_client.infer(
        MODEL,
        [triton_input([photos["dog2.jpg"]], False)],
        outputs=outputs,
        parameters={"topk": 3},
        headers=endpoint.headers,
    )
    assert result.as_numpy("label").shape == (1, 3) and result.as_numpy("index") is None
    assert first_labels(result) == ["Brittany spaniel"]


def test_tritonclient_bad_image_is_4xx_while_batched_neighbours_succeed(endpoint, triton_client, photos):
    pids = endpoint.pids()
    bad = triton_client.async_infer(
        MODEL, [triton_input([photos["cat.jpg"], b"no image here"], True)], headers=endpoint.headers
    )
    goods = [
        triton_client.async_infer(MODEL, [triton_input([photos[n]], True)], headers=endpoint.headers) for n in NAMES[:3]
    ]
    with pytest.raises(InferenceServerException) as err:
        bad.get_result()
    assert err.value.status() == "400" and "input element 1 of 2" in err.value.message()
    for name, good in zip(NAMES, goods):
        assert_acceptable(first_labels(good.get_result()), [name])
    assert endpoint.pids() == pids


def test_kserve_client_v2_and_v1(endpoint, photos):
    async def run():
        v2 = InferenceRESTClient(RESTConfig(protocol="v2", timeout=120))
        request = InferRequest(
            MODEL, [InferInput("image", [2], "BYTES", [b64(photos[n]) for n in NAMES[:2]])], request_id="k-2"
        )
        v1 = InferenceRESTClient(RESTConfig(protocol="v1", timeout=120))
        return await asyncio.gather(
            v2.infer(endpoint.url, request, model_name=MODEL, headers=endpoint.headers),
            v1.infer(
                endpoint.url,
                {"instances": [{"b64": b64(photos[n])} for n in NAMES]},
                model_name=MODEL,
                headers=endpoint.headers,
            ),
        )

    v2, v1 = asyncio.run(run())
    assert v2.id == "k-2" and v2.model_name == MODEL
    labels = {o.name: o.as_numpy() for o in v2.outputs}["label"]
    assert_acceptable([v.decode() if isinstance(v, bytes) else v for v in labels[:, 0]], NAMES[:2])
    assert_acceptable([p[0]["label"] for p in v1["predictions"]], NAMES)


def test_v2_json_on_predictions_as_kserves_wrapper_posts_it(server, photos):
    body, _ = InferRequest(
        MODEL, [InferInput("image", [1], "BYTES", [b64(photos["croco.jpg"])])], request_id="w"
    ).to_rest()
    resp = server.post(MODEL, data=json.dumps(body), headers={"Content-Type": "application/json"})
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["id"] == "w" and doc["outputs"][0]["name"] == "label"
    assert doc["outputs"][0]["data"][0] in labelled_photos()["croco.jpg"]


def _image_cases(photo: bytes):
    """The corpus's bad images (bodies that are bytes of a would-be image), for any protocol."""
    skip = ("empty", "json", "data_uri", "header", "text_plain")
    return [c for c in bad_cases(photo) if isinstance(c.body, bytes) and not c.name.startswith(skip)]


def test_bad_image_corpus_is_isolated_in_every_protocol(endpoint, photos):
    pids = endpoint.pids()
    url = endpoint.url
    good_body, good_size = triton.InferenceServerClient.generate_request_body(
        [triton_input([photos["dog1.jpg"]], True)]
    )

    def oip_binary(image):
        body, size = triton.InferenceServerClient.generate_request_body(
            [triton_input([photos["dog2.jpg"], image], True)]
        )
        return requests.post(
            f"{url}/v2/models/{MODEL}/infer",
            data=body,
            timeout=60,
            headers={**endpoint.headers, "Inference-Header-Content-Length": str(size)},
        )

    def kserve_v1(image):
        return requests.post(
            f"{url}/v1/models/{MODEL}:predict",
            json={"instances": [b64(photos["dog2.jpg"]), b64(image)]},
            headers=endpoint.headers,
            timeout=60,
        )

    def good():
        return requests.post(
            f"{url}/v2/models/{MODEL}/infer",
            data=good_body,
            timeout=60,
            headers={**endpoint.headers, "Inference-Header-Content-Length": str(good_size)},
        )

    failures = []
    cases = _image_cases(photos["dog1.jpg"])
    assert len(cases) >= 20
    with ThreadPoolExecutor(4) as pool:
        for case in cases:
            sent = {
                "oip": pool.submit(oip_binary, case.body),
                "v1": pool.submit(kserve_v1, case.body),
                "good": pool.submit(good),
                "plain": pool.submit(endpoint.post, plain_path(endpoint), data=photos["croco.jpg"]),
            }
            got = {k: f.result() for k, f in sent.items()}
            for protocol, where in (("oip", "input element 1 of 2"), ("v1", "instance 1 of 2")):
                r = got[protocol]
                body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                if (r.status_code, body.get("type")) != (case.code, case.type) or where not in body.get("error", ""):
                    failures.append((case.name, protocol, r.status_code, r.text[:160]))
            if got["good"].status_code != 200 or got["plain"].status_code != 200:
                failures.append((case.name, "neighbours", got["good"].status_code, got["plain"].status_code))
            else:
                result = triton.InferResult.from_response_body(
                    got["good"].content, header_length=int(got["good"].headers["Inference-Header-Content-Length"])
                )
                if first_labels(result) != ["Labrador retriever"]:
                    failures.append((case.name, "neighbour label", first_labels(result)))
    assert not failures, failures
    assert endpoint.pids() == pids
