import base64
import json

import pytest

from handlers.request.errors import InputError
from handlers.request.payload import extract_payload, parse_topk

IMG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4  # binary, like a JPEG
B64 = base64.b64encode(IMG)
LIMIT = 1 << 20


@pytest.mark.parametrize(
    "item",
    [
        {"data": IMG},
        {"body": bytearray(IMG)},
        {"upload": IMG},  # multipart field of any name
        {"body": B64},
        {"body": B64.decode()},  # text/plain body arrives as str
        {"body": b"data:image/jpeg;base64," + B64},
        {"body": base64.urlsafe_b64encode(IMG).rstrip(b"=")},
        {"body": b"\n".join(B64[i:i + 76] for i in range(0, len(B64), 76))},  # `base64` tool output
        {"body": {"image": B64.decode()}},
        {"body": {"data": B64.decode()}},
        {"body": [{"image": B64.decode()}]},
        {"body": json.dumps({"image": B64.decode()}).encode()},
    ],
)
def test_every_documented_input_form_yields_the_image(item):
    assert extract_payload(item, LIMIT).image == IMG


def test_topk_travels_with_a_json_body():
    assert extract_payload({"body": {"image": B64.decode(), "topk": 3}}, LIMIT).topk == 3


@pytest.mark.parametrize(
    "item, code, type_",
    [
        ({}, 400, "empty_body"),
        ({"body": {"img": "x"}}, 400, "missing_image_field"),
        ({"body": {"image": 42}}, 400, "bad_json"),
        ({"body": [1, 2]}, 400, "bad_json"),
        ({"body": b"data:image/png;base64,@@@@"}, 400, "bad_base64"),
        ({"body": {"image": "abc$%^"}}, 400, "bad_base64"),
        ({"body": IMG * 2000}, 413, "body_too_large"),
        ({"body": {"image": (B64 * 2000).decode()}}, 413, "body_too_large"),
    ],
)
def test_refusals_are_typed(item, code, type_):
    with pytest.raises(InputError) as err:
        extract_payload(item, LIMIT)
    assert (err.value.code, err.value.type) == (code, type_)
    assert err.value.message


def test_plain_text_is_not_mistaken_for_base64():
    text = b"this is plainly not an image"
    assert extract_payload({"body": text}, LIMIT).image == text


@pytest.mark.parametrize("value, expected", [(None, 5), ("", 5), (3, 3), ("7", 7), (" 2 ", 2)])
def test_parse_topk(value, expected):
    assert parse_topk(value, 5, 10) == expected


@pytest.mark.parametrize("value", [0, 11, "-1", "three", 2.5, True, "\uff13", "\u0663", "3\u00a0", "1e1"])
def test_parse_topk_out_of_range(value):
    with pytest.raises(InputError) as err:
        parse_topk(value, 5, 10)
    assert err.value.code == 400 and err.value.type == "bad_topk"
