"""One TorchServe request item -> a Request in the protocol it speaks; an answer -> its body.

The protocol is read from the body, not the route: TorchServe hands the handler the same item
for `/predictions/{m}`, `/v1/models/{m}:predict` and `/v2/models/{m}/infer`, and KServe's wrapper
forwards both KServe protocols to `/predictions/{m}`.

- Open Inference Protocol (v2): a JSON object with "inputs", or the binary tensor extension (an
  `Inference-Header-Content-Length` header, or a body whose JSON prefix names binary data).
- KServe v1: a JSON object with "instances".
- Anything else: the plain forms (raw bytes, multipart, base64, data URI, {"image": ...}).
"""

from __future__ import annotations

from collections.abc import Callable

from . import kserve_v1, oip, payload
from .errors import RequestError, bad_request
from .jsondoc import parse_json, value_end
from .request import KSERVE_V1, OIP, PLAIN, Limits, Request

BINARY_HEADER = "inference-header-content-length"
TOPK_HEADER = "x-topk"
BINARY_JSON_MAX = 65536  # the JSON header of a binary body that came without its length (gRPC)
JSON = {"content-type": "application/json"}


def read_request(item: dict, header: Callable[[str], str | None], limits: Limits) -> Request:
    """A request item (and its headers, by lower-case name) -> a Request. Bad input raises a
    RequestError answered in the protocol the request was recognised as."""
    protocol = PLAIN
    try:
        value = payload.body_value(item)
        topk_header = header(TOPK_HEADER)
        if isinstance(value, (bytes, bytearray, str)):
            raw = payload.as_bytes(value)
            try:
                doc, too_deep = parse_json(raw), None
            except RequestError as err:  # nested too deep: refused, unless only a binary body's JSON header
                doc, too_deep = None, err
            # not all JSON: perhaps the binary extension. A body that is all JSON is read as JSON
            # whatever Inference-Header-Content-Length says (tritonclient leaves that header in
            # the headers dict a caller passes, so the next JSON request carries a stale one).
            json_size = _binary_json_size(raw, header(BINARY_HEADER)) if doc is None else None
            if json_size is not None:
                protocol = OIP
                return oip.parse(_json_prefix(raw, json_size), memoryview(raw)[json_size:], limits, topk_header)
            if too_deep is not None:
                raise too_deep
        else:
            doc = value
        if isinstance(doc, dict) and "inputs" in doc:
            protocol = OIP
            return oip.parse(doc, None, limits, topk_header)
        if isinstance(doc, dict) and "instances" in doc:
            protocol = KSERVE_V1
            return kserve_v1.parse(doc, limits, topk_header)
        return payload.parse(value if doc is None else doc, limits, topk_header)
    except RequestError as err:
        raise err.answered_in(protocol) from None


def _binary_json_size(raw: bytes, header: str | None) -> int | None:
    """The JSON part's length of an OIP binary body, from the header or, where no header came
    through (gRPC), from a JSON prefix that declares binary data; None for other bodies."""
    if header is not None:
        if not header.strip().isdigit() or not 0 < int(header) <= len(raw):
            raise bad_request(
                "bad_binary_header",
                f"Inference-Header-Content-Length must be a byte count "
                f"from 1 to the body's {len(raw)}, got {header[:40]!r}.",
            )
        return int(header)
    head = raw[:BINARY_JSON_MAX]
    if head[:1] != b"{" or b"binary_data_size" not in head:
        return None
    end = value_end(head)
    return end if end is not None and end < len(raw) else None


def _json_prefix(raw: bytes, size: int) -> dict:
    doc = parse_json(raw[:size])
    if not isinstance(doc, dict):
        raise bad_request(
            "bad_json", f'The first {size} bytes (Inference-Header-Content-Length) are not a JSON object with "inputs".'
        )
    return doc


def response(request: Request, rows: list[list[dict]], model_name: str, version: str) -> tuple[object, dict]:
    """A request and its images' top-k rows -> (body, headers) in its protocol."""
    if request.protocol == PLAIN:
        return rows[0], JSON
    if request.protocol == KSERVE_V1:
        return kserve_v1.response(rows), JSON
    return oip.response(request, rows, model_name, version)
