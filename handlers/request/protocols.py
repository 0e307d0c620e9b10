"""One TorchServe request item -> a Request: which protocol it speaks, its images and options.

The protocol is read from the body, not the route: TorchServe hands the handler the same item
for `/predictions/{m}`, `/v1/models/{m}:predict` and `/v2/models/{m}/infer`, and KServe's wrapper
forwards both KServe protocols to `/predictions/{m}`.

- Open Inference Protocol (v2): a JSON object with "inputs", or the binary tensor extension (an
  `Inference-Header-Content-Length` header, or a body whose JSON prefix names binary data).
- KServe v1: a JSON object with "instances".
- Anything else: the plain forms (raw bytes, multipart, base64, data URI, {"image": ...}).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

from . import kserve_v1, oip
from .errors import InputError, bad_request
from .payload import as_bytes, body_value, from_body, parse_json

PLAIN, KSERVE_V1, OIP = "plain", "kserve_v1", "oip"
BINARY_HEADER = "inference-header-content-length"
JSON = {"content-type": "application/json"}


@dataclass(frozen=True)
class Limits:
    max_bytes: int  # per encoded image
    max_images: int  # per request
    max_pixels: int  # per image


@dataclass
class Request:
    """What one request asks for. `images` hold encoded bytes or uint8 [3, H, W] pixel tensors."""

    protocol: str = PLAIN
    images: list = field(default_factory=list)
    topk: object = None  # as the client sent it; checked by parse_topk
    id: str | None = None  # OIP: echoed in the answer
    outputs: tuple = oip.OUTPUTS  # OIP: the outputs asked for, in order
    binary: frozenset = frozenset()  # OIP: outputs answered in the binary extension
    error: InputError | None = None

    def element_error(self, index: int, err: InputError) -> InputError:
        """An error of one image -> the request's error, naming the image in the KServe protocols."""
        if self.protocol == PLAIN:
            return err
        element = kserve_v1.element if self.protocol == KSERVE_V1 else oip.element
        return err.at(element(index, len(self.images)))


def read_request(item: dict, header: Callable[[str], str | None], limits: Limits) -> Request:
    """A request item (and its headers, by lower-case name) -> a Request; never raises for bad input."""
    protocol = PLAIN
    try:
        value = body_value(item)
        if isinstance(value, (bytes, bytearray, str)):
            raw = as_bytes(value)
            doc = parse_json(raw)
            # not all JSON: perhaps the binary extension. A body that is all JSON is read as JSON
            # whatever Inference-Header-Content-Length says (tritonclient leaves that header in
            # the headers dict a caller passes, so the next JSON request carries a stale one).
            json_size = _binary_json_size(raw, header(BINARY_HEADER)) if doc is None else None
            if json_size is not None:
                protocol = OIP
                return _request(OIP, oip.parse(_json_prefix(raw, json_size), memoryview(raw)[json_size:], limits))
        else:
            doc = value
        if isinstance(doc, dict) and "inputs" in doc:
            protocol = OIP
            return _request(OIP, oip.parse(doc, None, limits))
        if isinstance(doc, dict) and "instances" in doc:
            protocol = KSERVE_V1
            return _request(KSERVE_V1, kserve_v1.parse(doc, limits))
        payload = from_body(value if doc is None else doc, limits.max_bytes)
        return Request(PLAIN, [payload.image], payload.topk)
    except InputError as err:
        return Request(protocol, error=err)


def _request(protocol: str, parsed: dict) -> Request:
    return Request(protocol, **parsed)


def _binary_json_size(raw: bytes, header: str | None) -> int | None:
    """The JSON part's length of an OIP binary body, from the header or, where no header came
    through (gRPC), from a JSON prefix that declares binary data; None for other bodies."""
    if header is not None:
        if not header.strip().isdigit() or not 0 < int(header) <= len(raw):
            raise bad_request("bad_binary_header", f"Inference-Header-Content-Length must be a byte count "
                                                   f"from 1 to the body's {len(raw)}, got {header[:40]!r}.")
        return int(header)
    if raw[:1] != b"{" or b"binary_data_size" not in raw[:65536]:
        return None
    text = raw.decode("utf-8", "surrogateescape")
    try:
        _, end = json.JSONDecoder().raw_decode(text)
    except ValueError:
        return None
    size = len(text[:end].encode("utf-8", "surrogateescape"))
    return size if size < len(raw) else None


def _json_prefix(raw: bytes, size: int) -> dict:
    try:
        doc = json.loads(raw[:size])
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request("bad_json", f"The first {size} bytes (Inference-Header-Content-Length) are not "
                                      f"a JSON object: {exc}.") from None
    if not isinstance(doc, dict):
        raise bad_request("bad_json", "The inference header must be a JSON object with \"inputs\".")
    return doc


def response(request: Request, result, model_name: str, version: str) -> tuple[object, dict]:
    """A request and its result (one top-k list per image, or an InputError) -> (body, headers)."""
    if isinstance(result, InputError):
        if request.protocol == PLAIN:
            return result.to_body(), JSON
        return json.dumps(result.to_kserve_body()).encode(), JSON
    if request.protocol == PLAIN:
        return result[0], JSON
    if request.protocol == KSERVE_V1:
        return kserve_v1.response(result), JSON
    return oip.response(request, result, model_name, version)
