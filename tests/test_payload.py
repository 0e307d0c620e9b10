import base64
import json

import pytest

from handlers.request.errors import InputError
from handlers.request.protocols import read_request
from handlers.request.request import Limits

IMG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4  # binary, like a JPEG
B64 = base64.b64encode(IMG)
LIMITS = Limits(max_bytes=1 << 20, max_images=4, max_pixels=10_000_000, topk=5, max_topk=10)


def read(item, headers=None):
    return read_request(item, (headers or {}).get, LIMITS)


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
        {"body": b"\n".join(B64[i : i + 76] for i in range(0, len(B64), 76))},  # `base64` tool output
        {"body": {"image": B64.decode()}},
        {"body": {"data": B64.decode()}},
        {"body": [{"image": B64.decode()}]},
        {"body": json.dumps({"image": B64.decode()}).encode()},
    ],
)
def test_every_documented_input_form_yields_the_image(item):
    request = read(item)
    assert request.protocol == "plain" and request.images == (IMG,) and request.topk == 5


def test_topk_travels_with_a_json_body_and_wins_over_the_header():
    assert read({"body": {"image": B64.decode(), "topk": 3}}).topk == 3
    assert read({"body": {"image": B64.decode(), "topk": 3}}, {"x-topk": "7"}).topk == 3
    assert read({"body": IMG}, {"x-topk": "7"}).topk == 7


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
        ({"body": b"[" * 33 + b"]" * 33}, 400, "bad_json"),
        ({"body": b"[" * 100_000 + b"]" * 100_000}, 400, "bad_json"),
        ({"body": "{" + '"a":{' * 100_000 + "}" * 100_001}, 400, "bad_json"),
    ],
)
def test_refusals_are_typed(item, code, type_):
    with pytest.raises(InputError) as err:
        read(item)
    assert (err.value.code, err.value.type) == (code, type_)
    assert err.value.message


def test_nesting_within_the_limit_is_read_and_brackets_inside_strings_do_not_count():
    doc = {"image": B64.decode(), "x": [[[[1]]]], "note": "[" * 1000}
    assert read({"body": json.dumps(doc).encode()}).images == (IMG,)
    with pytest.raises(InputError, match="more than 32 levels"):
        read(
            {
                "body": json.dumps(
                    {"image": B64.decode(), "x": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}
                ).encode()
            }
        )


def test_plain_text_is_not_mistaken_for_base64():
    text = b"this is plainly not an image"
    assert read({"body": text}).images == (text,)


@pytest.mark.parametrize("value, expected", [(None, 5), ("", 5), (3, 3), ("7", 7), (" 2 ", 2)])
def test_resolve_topk(value, expected):
    assert LIMITS.resolve_topk(value) == expected


@pytest.mark.parametrize(
    "value", [0, 11, "-1", "three", 2.5, True, "\uff13", "\u0663", "3\u00a0", "1e1", [3], {"k": 3}]
)
def test_resolve_topk_out_of_range(value):
    with pytest.raises(InputError) as err:
        LIMITS.resolve_topk(value)
    assert err.value.code == 400 and err.value.type == "bad_topk"
