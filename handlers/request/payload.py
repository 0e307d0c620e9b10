"""The plain forms of a request: raw image bytes, a multipart field, base64 text or a data URI,
or JSON {"image": "<base64>", "topk": 3}; and the body and base64 helpers every protocol uses."""

from __future__ import annotations

import binascii
import re

from .errors import bad_request, too_large
from .request import PLAIN, Limits, Request

try:
    from pybase64 import b64decode as _b64decode
except ImportError:  # a TorchServe image without it: the same answers, slower
    from base64 import b64decode as _b64decode

# Keys TorchServe uses for a raw body ("body", "data") and the multipart field names people use.
BODY_KEYS = ("data", "body", "image", "file", "img")
# Fields of a JSON body that may hold the base64 image, in the order they are looked for.
JSON_IMAGE_FIELDS = ("image", "data", "b64", "image_base64")
TOPK_FIELDS = ("topk", "top_k", "k")
_DATA_URI = re.compile(rb"^data:([\w.+-]+/[\w.+-]+)?(;[\w=.+-]+)*;base64,", re.IGNORECASE)
_B64_TEXT = re.compile(rb"^[A-Za-z0-9+/_\-\r\n]+={0,2}\s*$")  # line breaks allowed, spaces not
_WHITESPACE = (b"\n", b"\r", b" ", b"\t", b"\f", b"\v")
_URLSAFE = bytes.maketrans(b"-_", b"+/")


def body_value(item: dict):
    """The body of a TorchServe request item: bytes, str (text/*), or parsed JSON (application/json)."""
    if not isinstance(item, dict) or not item:
        raise bad_request(
            "empty_body",
            "The request carried no image: the body is empty or form-urlencoded. Send the image bytes "
            "as the body (curl -T photo.jpg or --data-binary @photo.jpg -H 'Content-Type: "
            'application/octet-stream\'), as a multipart field, or as JSON {"image": "<base64>"}.',
        )
    value = next((item[k] for k in BODY_KEYS if k in item), None)
    if value is None:  # a multipart form with some other field name: take the first one
        value = next(iter(item.values()))
    return value


def parse(value, limits: Limits, topk_header: str | None) -> Request:
    """A plain body (bytes or str not in JSON, or a JSON document already parsed) -> its Request."""
    if isinstance(value, (bytes, bytearray, str)):
        return Request(PLAIN, (image_bytes(as_bytes(value), limits.max_bytes),), limits.resolve_topk(None, topk_header))
    if not isinstance(value, (dict, list)):
        raise bad_request("unreadable_body", f"Cannot read a request body of type {type(value).__name__}.")
    doc = value
    if isinstance(doc, list):
        if len(doc) != 1:
            raise bad_request(
                "bad_json",
                f'A JSON body must be one object, e.g. {{"image": "<base64>"}}; got a list of {len(doc)}.',
            )
        doc = doc[0]
    if isinstance(doc, str):
        return Request(PLAIN, (decode_base64(doc.encode(), limits.max_bytes),), limits.resolve_topk(None, topk_header))
    if not isinstance(doc, dict):
        raise bad_request("bad_json", 'A JSON body must be an object such as {"image": "<base64>"}.')
    field = next((f for f in JSON_IMAGE_FIELDS if f in doc), None)
    if field is None:
        raise bad_request(
            "missing_image_field",
            f'The JSON body has no image field. Put the base64 image under "image" (found keys: {sorted(doc)[:10]}).',
        )
    image = doc[field]
    if isinstance(image, list) and len(image) == 1:
        image = image[0]
    if isinstance(image, dict):
        image = image.get("b64", image.get("data"))
    if not isinstance(image, str):
        raise bad_request("bad_json", f'The JSON field "{field}" must be a base64 string.')
    asked = next((doc[key] for key in TOPK_FIELDS if key in doc), None)
    return Request(PLAIN, (decode_base64(image.encode(), limits.max_bytes),), limits.resolve_topk(asked, topk_header))


def as_bytes(value) -> bytes:
    """bytes, bytearray or str (TorchServe decodes text/* bodies to str) -> bytes."""
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else bytes(value)


def image_bytes(raw: bytes, max_bytes: int) -> bytes:
    """Bytes that are an encoded image, or its base64 text or data URI -> the encoded image."""
    _check_size(len(raw), max_bytes)
    if _DATA_URI.match(raw[:200]) or _is_base64_text(raw):
        return decode_base64(raw, max_bytes)
    return raw


def decode_base64(text: bytes, max_bytes: int) -> bytes:
    """Base64 (standard or URL-safe, with or without a data: URI prefix) -> bytes, with pybase64
    (SIMD) where the serving Python has it, the standard library's base64 otherwise."""
    match = _DATA_URI.match(text[:200])
    if match:
        text = text[match.end() :]
    if any(c in text for c in _WHITESPACE):  # `base64` wraps lines; translate beats re.sub by far
        text = text.translate(None, b" \t\r\n\f\v")
    _check_size(len(text) * 3 // 4, max_bytes)
    if b"-" in text or b"_" in text:
        text = text.translate(_URLSAFE)
    if len(text) % 4:
        text += b"=" * (-len(text) % 4)
    try:
        return _b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad_request("bad_base64", f"The base64 image could not be decoded: {exc}.") from None


def _check_size(n: int, max_bytes: int) -> None:
    if n > max_bytes:
        raise too_large(
            "body_too_large",
            f"The image is {n} bytes; this model accepts at most {max_bytes} bytes.",
        )


def _is_base64_text(raw: bytes) -> bool:
    # Binary images never consist only of base64 characters; short texts are left to the decoder.
    return len(raw) >= 16 and _B64_TEXT.match(raw) is not None
