"""KServe v1 and the Open Inference Protocol in-process: requests built and answers read by the
clients' own encoders (tritonclient, kserve), mixed with plain requests in one TorchServe batch."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import tritonclient.http as triton
from kserve import InferInput, InferRequest, InferResponse
from PIL import Image

from handlers.request.errors import RequestError
from handlers.request.protocols import read_request
from handlers.request.request import Limits
from tests.clients import b64, triton_input
from tests.conftest import labelled_photos
from tests.handler_harness import run_batch

NAMES = ["kitten.jpg", "dog1.jpg", "croco.jpg"]
LIMITS = Limits(max_bytes=1 << 20, max_images=4, max_pixels=10_000_000)


def triton_request(images: list[bytes], binary: bool, outputs=None, request_id="r1") -> tuple[bytes, dict]:
    tensor = triton_input(images, binary)
    body, json_size = triton.InferenceServerClient.generate_request_body(
        [tensor], outputs=outputs, request_id=request_id
    )
    return body, ({} if json_size is None else {"Inference-Header-Content-Length": str(json_size)})


def triton_result(answer) -> triton.InferResult:
    size = answer.headers.get("Inference-Header-Content-Length")
    return triton.InferResult.from_response_body(answer.body, header_length=None if size is None else int(size))


def assert_labels(rows, names):
    for row, name in zip(rows, names):
        assert row in labelled_photos()[name], (name, row)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_request_gets_one_row_per_image(handler, photos, binary):
    body, headers = triton_request([photos[n] for n in NAMES], binary)
    (answer,) = run_batch(handler, [{"body": body}], [headers])
    assert answer.status == 200, answer
    result = triton_result(answer)
    labels = result.as_numpy("label")
    assert labels.shape == (3, 5) and result.as_numpy("probability").shape == (3, 5)
    assert result.as_numpy("probability").dtype == np.float32 and result.as_numpy("index").dtype == np.int64
    assert_labels([row[0].decode() for row in labels], NAMES)
    meta = result.get_response()
    assert (meta["id"], meta["model_name"], meta["model_version"]) == ("r1", "test", "2.5")
    # naming no outputs, tritonclient asks for binary_data_output in either mode
    assert json.loads(body[: int(headers.get("Inference-Header-Content-Length", len(body)))])["parameters"] == {
        "binary_data_output": True
    }
    assert int(answer.headers["Inference-Header-Content-Length"]) < len(answer.body)


def test_requested_outputs_in_json_with_topk(handler, photos):
    outputs = [
        triton.InferRequestedOutput("label", binary_data=False),
        triton.InferRequestedOutput("index", binary_data=True),
    ]
    tensor = triton.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b64(photos["bus.jpg"])], dtype=object), binary_data=False)
    body, size = triton.InferenceServerClient.generate_request_body([tensor], outputs=outputs, parameters={"topk": 2})
    (answer,) = run_batch(handler, [{"body": json.loads(body)}])  # application/json arrives parsed
    result = triton_result(answer)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["label", "index"]
    assert result.as_numpy("label").shape == (1, 2) and result.as_numpy("label")[0, 0] == "minibus"
    assert result.as_numpy("index").shape == (1, 2) and result.as_numpy("probability") is None
    assert "id" not in result.get_response()


def test_kserve_v2_request_and_response_types(handler, photos):
    request = InferRequest(
        "test", [InferInput("image", [2], "BYTES", [b64(photos[n]) for n in NAMES[:2]])], request_id="k9"
    )
    body, json_size = request.to_rest()
    assert json_size is None
    (answer,) = run_batch(handler, [{"body": body}])
    response = InferResponse.from_bytes(answer.body, len(answer.body))
    assert response.id == "k9" and response.model_name == "test"
    labels = response.outputs[0].as_numpy()
    assert labels.shape == (2, 5)
    assert_labels([v.decode() if isinstance(v, bytes) else v for v in labels[:, 0]], NAMES[:2])


@pytest.mark.parametrize(
    "instance",
    [
        lambda d: b64(d),
        lambda d: {"b64": b64(d)},
        lambda d: {"data": b64(d)},
        lambda d: {"image_bytes": {"b64": b64(d)}},
    ],
)
def test_kserve_v1_instances(handler, photos, instance):
    (answer,) = run_batch(handler, [{"body": {"instances": [instance(photos[n]) for n in NAMES]}}])
    predictions = json.loads(answer.body)["predictions"]
    assert len(predictions) == 3 and all(len(p) == 5 for p in predictions)
    assert_labels([p[0]["label"] for p in predictions], NAMES)


def test_protocols_mix_in_one_batch_and_a_bad_image_fails_only_its_request(handler, photos):
    good_bin, good_headers = triton_request([photos["dog2.jpg"], photos["bus.jpg"]], binary=True)
    bad_json, _ = triton_request([photos["kitten.jpg"], b"not an image at all", photos["cat.jpg"]], binary=False)
    items = [
        {"body": photos["croco.jpg"]},
        {"body": {"instances": [b64(photos["dog1.jpg"])]}},
        {"body": bad_json},
        {"body": good_bin},
        {"body": {"instances": [b64(photos["dog.jpg"]), {"b64": "@@@"}]}},
        {"body": {"image": b64(photos["kitten.jpg"]), "topk": 1}},
    ]
    answers = run_batch(handler, items, [{}, {}, {}, good_headers, {}, {}])
    assert [a.status for a in answers] == [200, 200, 400, 200, 400, 200]
    assert answers[0].body[0]["label"] in labelled_photos()["croco.jpg"]
    assert json.loads(answers[1].body)["predictions"][0][0]["label"] in labelled_photos()["dog1.jpg"]
    error = json.loads(answers[2].body)
    assert error["type"] == "not_an_image" and error["error"].startswith("input element 1 of 3:")
    assert_labels([v.decode() for v in triton_result(answers[3]).as_numpy("label")[:, 0]], ["dog2.jpg", "bus.jpg"])
    error = json.loads(answers[4].body)
    assert error["type"] == "bad_base64" and error["error"].startswith("instance 1 of 2:")
    assert len(answers[5].body) == 1 and answers[5].body[0]["label"] in labelled_photos()["kitten.jpg"]


def test_uint8_pixels_get_the_same_label_as_the_encoded_photo(handler, photos):
    pixels = np.asarray(Image.open(io.BytesIO(photos["dog1.jpg"])).convert("RGB"))[None]
    tensor = triton.InferInput("image", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=True)
    body, size = triton.InferenceServerClient.generate_request_body([tensor])
    (answer,) = run_batch(handler, [{"body": body}], [{"Inference-Header-Content-Length": str(size)}])
    assert triton_result(answer).as_numpy("label")[0, 0].decode() in labelled_photos()["dog1.jpg"]


def test_an_all_json_body_ignores_a_stale_binary_header(photos):
    body, _ = triton_request([photos["bus.jpg"]], binary=False)
    for stale in ("142", "99999999"):
        request = read_request({"body": body}, {"inference-header-content-length": stale}.get, LIMITS)
        assert request.images == (photos["bus.jpg"],)


def test_binary_body_without_its_header_is_still_recognised(photos):
    body, _ = triton_request([photos["bus.jpg"]], binary=True)
    request = read_request({"body": body}, {}.get, LIMITS)
    assert request.protocol == "oip" and request.images == (photos["bus.jpg"],)


BINARY_HEAD = b'{"inputs":[{"name":"i","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":9}}]}'


def _oip(tensor: dict, **extra) -> dict:
    return {"body": {"inputs": [{"name": "image", **tensor}], **extra}}


@pytest.mark.parametrize(
    "item, headers, code, type_",
    [
        (_oip({"shape": [1], "datatype": "FP32", "data": [1.0]}), {}, 400, "unsupported_datatype"),
        (_oip({"shape": [2], "datatype": "BYTES", "data": ["aGVsbG8="]}), {}, 400, "bad_shape"),
        (_oip({"shape": [5], "datatype": "BYTES", "data": ["aGVsbG8="] * 5}), {}, 413, "too_many_images"),
        (_oip({"shape": [1], "datatype": "BYTES"}), {}, 400, "missing_data"),
        (_oip({"shape": "1", "datatype": "BYTES", "data": ["x"]}), {}, 400, "bad_shape"),
        (_oip({"shape": [1], "datatype": "BYTES", "data": [7]}), {}, 400, "bad_data"),
        (
            _oip({"shape": [1], "datatype": "BYTES", "data": ["aGVsbG8="]}, outputs=[{"name": "logits"}]),
            {},
            400,
            "unknown_output",
        ),
        (_oip({"shape": [1, 2, 2, 3], "datatype": "UINT8", "data": [300] * 12}), {}, 400, "bad_data"),
        (_oip({"shape": [1, 4000, 4000, 3], "datatype": "UINT8", "data": []}), {}, 413, "too_many_pixels"),
        ({"body": {"inputs": []}}, {}, 400, "bad_oip_request"),
        ({"body": {"inputs": [{"name": "a"}, {"name": "b"}]}}, {}, 400, "bad_oip_request"),
        (
            {"body": BINARY_HEAD + b"abc"},
            {"inference-header-content-length": str(len(BINARY_HEAD))},
            400,
            "bad_binary_data",
        ),
        ({"body": b'{"inputs": []}\x00\x01'}, {"inference-header-content-length": "x"}, 400, "bad_binary_header"),
        ({"body": b'{"inputs": []'}, {"inference-header-content-length": "13"}, 400, "bad_json"),
        ({"body": {"instances": []}}, {}, 400, "bad_instances"),
        ({"body": {"instances": [{"jpeg": "x"}]}}, {}, 400, "bad_instances"),
        ({"body": {"instances": ["aGVsbG8="] * 5}}, {}, 413, "too_many_images"),
    ],
)
def test_malformed_requests_are_typed_refusals(item, headers, code, type_):
    with pytest.raises(RequestError) as refused:
        read_request(item, headers.get, LIMITS)
    assert (refused.value.code, refused.value.type) == (code, type_), refused.value.message


def test_refusals_answer_in_the_protocols_error_form(handler):
    items = [_oip({"shape": [1], "datatype": "FP32", "data": [1.0]}), {"body": {"instances": []}}, {"body": b"x" * 20}]
    answers = run_batch(handler, items)
    assert [a.status for a in answers] == [400, 400, 400]
    assert set(json.loads(answers[0].body)) == {"error", "code", "type"} == set(json.loads(answers[1].body))
    assert answers[2].body["type"] == "not_an_image" and "message" in answers[2].body  # plain form unchanged
