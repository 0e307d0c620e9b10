"""KServe's v1 protocol: {"instances": [...]} -> a Request; answers -> {"predictions": [...]}.

Each instance is an image in base64: a string, {"b64": ...}, {"data": ...}, {"image": ...} or
TensorFlow Serving's {"image_bytes": {"b64": ...}}. Top-k, when asked for, sits beside
"instances" (`"topk": 3`) or in "parameters".
"""

from __future__ import annotations

import json

from .errors import RequestError, bad_request, too_large
from .payload import decode_base64
from .request import KSERVE_V1, Limits, Request, element

INSTANCE_FIELDS = ("b64", "data", "image", "image_bytes")


def parse(doc: dict, limits: Limits, topk_header: str | None) -> Request:
    instances = doc["instances"]
    if not isinstance(instances, list) or not instances:
        raise bad_request("bad_instances", '"instances" must be a non-empty list of base64 images.')
    if len(instances) > limits.max_images:
        raise too_large(
            "too_many_images",
            f"A request may hold at most {limits.max_images} images; this one holds {len(instances)}.",
        )
    images = []
    for i, instance in enumerate(instances):
        try:
            images.append(decode_base64(_base64_of(instance).encode(), limits.max_bytes))
        except RequestError as err:
            raise err.at(element(KSERVE_V1, i, len(instances))) from None
    params = doc.get("parameters") if isinstance(doc.get("parameters"), dict) else {}
    return Request(KSERVE_V1, tuple(images), limits.resolve_topk(doc.get("topk", params.get("topk")), topk_header))


def _base64_of(instance) -> str:
    value = instance
    while isinstance(value, dict):
        key = next((f for f in INSTANCE_FIELDS if f in value), None)
        if key is None:
            raise bad_request(
                "bad_instances",
                f"An instance must be a base64 string or an object with one of "
                f"{list(INSTANCE_FIELDS)}; found keys {sorted(value)[:8]}.",
            )
        value = value[key]
    if not isinstance(value, str):
        raise bad_request("bad_instances", f"An instance's image must be a base64 string, got {type(value).__name__}.")
    return value


def response(rows: list[list[dict]]) -> bytes:
    return json.dumps({"predictions": rows}, separators=(",", ":")).encode()
