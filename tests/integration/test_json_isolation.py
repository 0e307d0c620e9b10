"""Through a real TorchServe: JSON of every shape, in every field of every protocol, answers its
own request (a 4xx with a JSON body naming the problem, or 200 where the value happens to be
valid), never a 5xx; its good neighbours in the same batch answer 200 with their labels; and the
worker process never changes. Nesting to 10^5 levels, numbers of 10^6 digits, NaN and Infinity,
duplicate keys, a byte-order mark, UTF-16, and every JSON type where an image, a top-k, a
shape or an id is expected."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import IMAGES, labelled_photos
from tests.integration.conftest import MODEL

pytestmark = pytest.mark.integration
GOOD = ["dog1.jpg", "croco.jpg"]
HOLE = "@@VALUE@@"


def _b64(name: str) -> str:
    return base64.b64encode((IMAGES / name).read_bytes()).decode()


def templates() -> dict:
    """A valid request of each protocol, keyed by the path of each field a value may replace."""
    image = _b64("kitten.jpg")
    plain = {"image": image, "topk": 3}
    v1 = {"instances": [{"b64": image}], "topk": 3}
    oip = {
        "id": "r1",
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [image]}],
        "outputs": [{"name": "label"}],
        "parameters": {"topk": 3},
    }
    return {
        "plain": (plain, [("image",), ("topk",), ()]),
        "v1": (v1, [("instances",), ("instances", 0), ("instances", 0, "b64"), ("topk",)]),
        "oip": (
            oip,
            [
                ("id",),
                ("inputs",),
                ("inputs", 0),
                ("inputs", 0, "shape"),
                ("inputs", 0, "shape", 0),
                ("inputs", 0, "datatype"),
                ("inputs", 0, "data"),
                ("inputs", 0, "data", 0),
                ("outputs",),
                ("outputs", 0, "name"),
                ("parameters",),
                ("parameters", "topk"),
            ],
        ),
    }


def nested(depth: int, opener: str = "[", closer: str = "]") -> str:
    return opener * depth + closer * depth


# Raw JSON text, so that nesting and lengths past what json.dumps would recurse on can be built.
VALUES = {
    "deep array": nested(100_000),
    "deep object": '{"a":' * 100_000 + "1" + "}" * 100_000,
    "just past the depth limit": nested(33),
    "deep under TorchServe's recursion limit": nested(900),
    "million-digit integer": "9" * 1_000_000,
    "million-digit float": "1." + "5" * 1_000_000,
    "NaN": "NaN",
    "Infinity": "Infinity",
    "-Infinity": "-Infinity",
    "null": "null",
    "true": "true",
    "false": "false",
    "zero": "0",
    "negative": "-3",
    "float": "2.5",
    "empty string": '""',
    "empty array": "[]",
    "empty object": "{}",
    "string": '"x"',
    "array of objects": '[{"a": 1}, {"b": [2]}]',
    "unicode string": json.dumps("\u2603 \U0001f600 caf\u00e9"),
    "long string": json.dumps("z" * 100_000),
}
ENCODINGS = {
    "json": ("application/json", lambda text: text.encode("utf-8")),
    "bytes": ("application/octet-stream", lambda text: text.encode("utf-8")),
    "bom": ("application/json", lambda text: b"\xef\xbb\xbf" + text.encode("utf-8")),
    "utf-16": ("application/json", lambda text: text.encode("utf-16")),
}


def body_with(template: dict, path: tuple, value: str) -> str:
    """The template's JSON text with the field at `path` (the whole document for ()) replaced by `value`."""
    if not path:
        return value
    doc = json.loads(json.dumps(template))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = HOLE
    return json.dumps(doc).replace(json.dumps(HOLE), value, 1)


def with_duplicate_key(template: dict) -> str:
    """The template with its first key given twice, garbage first: JSON takes the last one."""
    text = json.dumps(template)
    key = next(iter(template))
    return "{" + f'"{key}": [[["garbage"]]], ' + text[1:]


def post(server, body: bytes, content_type: str):
    return server.post(MODEL, data=body, headers={"Content-Type": content_type}, timeout=120)


def assert_own_answer(resp, what: str) -> None:
    assert resp.status_code < 500, (what, resp.status_code, resp.text[:300])
    if resp.status_code != 200:
        body = resp.json()
        answer = body.get("message") or body.get("error")
        assert body["code"] == resp.status_code and body["type"] and answer, (what, body)


def send_beside_neighbours(server, bad: list[tuple[str, bytes, str]]) -> dict:
    """The bad bodies and the good photos at once (one TorchServe batch of up to 8)."""
    with ThreadPoolExecutor(len(bad) + len(GOOD)) as pool:
        bad_futures = {what: pool.submit(post, server, body, ctype) for what, body, ctype in bad}
        goods = {name: pool.submit(server.post, MODEL, data=(IMAGES / name).read_bytes()) for name in GOOD}
    for name, future in goods.items():
        resp = future.result()
        assert resp.status_code == 200, (name, [w for w, _, _ in bad], resp.text[:300])
        assert resp.json()[0]["label"] in labelled_photos()[name], (name, resp.json()[0])
    return {what: future.result() for what, future in bad_futures.items()}


@pytest.mark.parametrize("encoding", ["json", "bytes"])
def test_json_nested_a_hundred_thousand_deep_is_400_beside_good_neighbours(server, encoding):
    pids = server.worker_pids(MODEL)
    ctype, encode = ENCODINGS[encoding]
    answers = send_beside_neighbours(
        server, [(name, encode(VALUES[name]), ctype) for name in ("deep array", "deep object")]
    )
    for what, resp in answers.items():
        assert resp.status_code == 400, (what, resp.text[:300])
        assert resp.json()["type"] == "bad_json" and "32 levels" in resp.json()["message"], resp.json()
    assert server.worker_pids(MODEL) == pids


def every_case() -> list[tuple[str, bytes, str]]:
    """Every value in every field of every protocol; the encodings taken in turn."""
    cases, encodings = [], sorted(ENCODINGS)
    for protocol, (template, paths) in sorted(templates().items()):
        for path in paths:
            for value in sorted(VALUES):
                encoding = encodings[len(cases) % len(encodings)]
                ctype, encode = ENCODINGS[encoding]
                cases.append(
                    (
                        f"{protocol} {path} = {value} as {encoding}",
                        encode(body_with(template, path, VALUES[value])),
                        ctype,
                    )
                )
    return cases


def test_any_json_in_any_field_of_any_protocol_is_answered_alone(server):
    pids = server.worker_pids(MODEL)
    cases = every_case()
    for start in range(0, len(cases), 6):  # six beside two good photos: one batch of 8
        for what, resp in send_beside_neighbours(server, cases[start : start + 6]).items():
            assert_own_answer(resp, what)
    assert server.worker_pids(MODEL) == pids


def test_duplicate_keys_take_the_last_value_in_every_protocol(server):
    bad = [
        (f"{p} duplicate key", with_duplicate_key(t).encode(), "application/json") for p, (t, _) in templates().items()
    ]
    for what, resp in send_beside_neighbours(server, bad).items():
        assert resp.status_code == 200, (what, resp.text[:300])
