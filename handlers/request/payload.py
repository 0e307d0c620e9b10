"""One TorchServe request item -> the image bytes and the per-request options it carries."""

from __future__ import annotations

import binascii
import json
import re
from dataclasses import dataclass

from .errors import bad_request, too_large

try:
    from pybase64 import b64decode as _b64decode
except ImportError:  # a TorchServe image without it: the same answers, slower
    from base64 import b64decode as _b64decode

# Keys TorchServe uses for a raw body ("body", "data") and the multipart field names people use.
BODY_KEYS = ("data", "body", "image", "file", "img")
# Fields of a JSON body that may hold the base64 image, in the order they are looked for.
JSON_IMAGE_FIELDS = ("image", "data", "b64", "image_base64")
_DATA_URI = re.compile(rb"^data:([\w.+-]+/[\w.+-]+)?(;[\w=.+-]+)*;base64,", re.IGNORECASE)
_B64_TEXT = re.compile(rb"^[A-Za-z0-9+/_\-\r\n]+={0,2}\s*$")  # line breaks allowed, spaces not
_WHITESPACE = (b"\n", b"\r", b" ", b"\t", b"\f", b"\v")
_URLSAFE = bytes.maketrans(b"-_", b"+/")
_ASCII_INT = re.compile(r"^[ \t]*\+?[0-9]{1,9}[ \t]*$")


@dataclass
class Payload:
    """What one request asks for: the encoded image and, optionally, its own top-k."""

    image: bytes
    topk: int | None = None


def extract_payload(item: dict, max_bytes: int) -> Payload:
    """Find the image in a request item (raw bytes, multipart field, JSON, base64 or data URI)."""
    return from_body(body_value(item), max_bytes)


def body_value(item: dict):
    """The body of a TorchServe request item: bytes, str (text/*), or parsed JSON (application/json)."""
    if not isinstance(item, dict) or not item:
        raise bad_request(
            "empty_body",
            "The request carried no image: the body is empty or form-urlencoded. Send the image bytes "
            "as the body (curl -T photo.jpg or --data-binary @photo.jpg -H 'Content-Type: "
            "application/octet-stream'), as a multipart field, or as JSON {\"image\": \"<base64>\"}.",
        )
    value = next((item[k] for k in BODY_KEYS if k in item), None)
    if value is None:  # a multipart form with some other field name: take the first one
        value = next(iter(item.values()))
    return value


def from_body(value, max_bytes: int) -> Payload:
    """The plain forms: a body (as body_value gives it) -> its one image and top-k."""
    if isinstance(value, (bytes, bytearray, str)):
        doc = parse_json(value)
        if doc is not None:
            return _from_json(doc, max_bytes)
        return Payload(image_bytes(as_bytes(value), max_bytes))
    if isinstance(value, (dict, list)):  # TorchServe parses application/json bodies
        return _from_json(value, max_bytes)
    raise bad_request("unreadable_body", f"Cannot read a request body of type {type(value).__name__}.")


def as_bytes(value) -> bytes:
    """bytes, bytearray or str (TorchServe decodes text/* bodies to str) -> bytes."""
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else bytes(value)


def parse_json(value):
    """A JSON object or array given as bytes or str -> the document; None for anything else."""
    head = value[:1]
    if head not in (b"{", b"[", "{", "["):
        return None
    try:
        return json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return None


def image_bytes(raw: bytes, max_bytes: int) -> bytes:
    """Bytes that are an encoded image, or its base64 text or data URI -> the encoded image."""
    _check_size(len(raw), max_bytes)
    if _DATA_URI.match(raw[:200]) or _is_base64_text(raw):
        return decode_base64(raw, max_bytes)
    return raw


def _from_json(doc, max_bytes: int) -> Payload:
    if isinstance(doc, list):
        if len(doc) != 1:
            raise bad_request(
                "bad_json",
                f"A JSON body must be one object, e.g. {{\"image\": \"<base64>\"}}; got a list of {len(doc)}.",
            )
        doc = doc[0]
    if isinstance(doc, str):
        return Payload(decode_base64(doc.encode(), max_bytes))
    if not isinstance(doc, dict):
        raise bad_request("bad_json", 'A JSON body must be an object such as {"image": "<base64>"}.')
    field = next((f for f in JSON_IMAGE_FIELDS if f in doc), None)
    if field is None:
        raise bad_request(
            "missing_image_field",
            f"The JSON body has no image field. Put the base64 image under \"image\" "
            f"(found keys: {sorted(doc)[:10]}).",
        )
    image = doc[field]
    if isinstance(image, list) and len(image) == 1:
        image = image[0]
    if isinstance(image, dict):
        image = image.get("b64", image.get("data"))
    if not isinstance(image, str):
        raise bad_request("bad_json", f'The JSON field "{field}" must be a base64 string.')
    return Payload(decode_base64(image.encode(), max_bytes), topk=_topk_field(doc))


def _topk_field(doc: dict):
    for key in ("topk", "top_k", "k"):
        if key in doc:
            return doc[key]
    return None


def decode_base64(text: bytes, max_bytes: int) -> bytes:
    """Base64 (standard or URL-safe, with or without a data: URI prefix) -> bytes.

    With pybase64 (a dependency; SIMD, 60x faster than the standard library on a 12 MP photo's
    base64) when the serving Python has it, the standard library's base64 otherwise."""
    match = _DATA_URI.match(text[:200])
    if match:
        text = text[match.end():]
    if any(c in text for c in _WHITESPACE):  # `base64` wraps lines; translate is 30x faster than re.sub
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


def parse_topk(value, default: int, maximum: int) -> int:
    """A client's top-k (int or numeric string) checked against 1..maximum."""
    if value is None or value == "":
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        k = value
    elif isinstance(value, str) and _ASCII_INT.match(value):  # int() would also take "３" or "٣"
        k = int(value)
    else:
        k = None
    if k is None or not 1 <= k <= maximum:
        raise bad_request("bad_topk", f"topk must be an integer from 1 to {maximum}, got {value!r}.")
    return k
