"""The Open Inference Protocol (KServe v2) over REST: its request -> images, answers -> its response.

Spec: https://github.com/kserve/open-inference-protocol (rest_predict_v2.yaml). One input holds
the images: datatype BYTES, shape [N] (or [N, 1]), each element an encoded image, as base64 text
in JSON or raw in the binary tensor extension (each element a 4-byte little-endian length, then
its bytes); or datatype UINT8, shape [N, H, W, 3], pixels a client decoded itself. Answers hold
`label` (BYTES [N, k]), `probability` (FP32 [N, k]) and `index` (INT64 [N, k]), in JSON or, when
asked for, in the binary extension.
"""

from __future__ import annotations

import json
import math
import struct

import torch

from .errors import RequestError, bad_request, preview, too_large
from .jsondoc import MAX_DEPTH
from .payload import decode_base64, image_bytes
from .request import OIP, OUTPUTS, Limits, Request, element

DATATYPES = {"label": "BYTES", "probability": "FP32", "index": "INT64"}
_STRUCT = {"probability": "f", "index": "q"}
WRAPPER_HINT = (
    " (Behind KServe's TorchServe wrapper with protocolVersion grpc-v2, only the first image of a gRPC request"
    " reaches the model: send one image per gRPC request.)"
)


def parse(doc: dict, binary: memoryview | None, limits: Limits, topk_header: str | None) -> Request:
    """An OIP request (its JSON part and the bytes after it) -> its Request."""
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, dict) for i in inputs):
        raise bad_request("bad_oip_request", '"inputs" must be a non-empty list of tensors.')
    if len(inputs) != 1:
        names = [i.get("name") for i in inputs][:8]
        raise bad_request(
            "bad_oip_request", f"This model takes one input, the images; got {len(inputs)}: {preview(names)}."
        )
    tensor = inputs[0]
    params = _params(doc, "the request")
    outputs, binary_out = _outputs(doc, params)
    if not limits.binary_outputs:
        binary_out = frozenset()
    data = _data(tensor, binary)
    datatype, shape = tensor.get("datatype"), _shape(tensor.get("shape"))
    if datatype == "BYTES":
        images = _encoded_images(data, shape, limits)
    elif datatype == "UINT8":
        images = _pixel_images(data, shape, limits)
    else:
        raise bad_request(
            "unsupported_datatype",
            f"The input's datatype must be BYTES (encoded images) or "
            f"UINT8 (pixels [N, H, W, 3]), got {preview(datatype)}.",
        )
    topk = limits.resolve_topk(params.get("topk", _params(tensor, "the input").get("topk")), topk_header)
    return Request(OIP, tuple(images), topk, _id(doc.get("id")), outputs, binary_out)


def _params(obj: dict, where: str) -> dict:
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise bad_request("bad_oip_request", f'"parameters" of {where} must be an object.')
    return params


def _id(value) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    raise bad_request("bad_oip_request", f'"id" must be a string, got {type(value).__name__}.')


def _outputs(doc: dict, params: dict) -> tuple[tuple, frozenset]:
    requested = doc.get("outputs")
    all_binary = params.get("binary_data_output") is True
    if requested is None:
        return OUTPUTS, frozenset(OUTPUTS if all_binary else ())
    if not isinstance(requested, list) or not all(isinstance(o, dict) for o in requested):
        raise bad_request("bad_oip_request", '"outputs" must be a list of {"name": ...} objects.')
    names = [o.get("name") for o in requested]
    unknown = [n for n in names if not isinstance(n, str) or n not in OUTPUTS]
    if unknown or not names:
        raise bad_request(
            "unknown_output", f"This model's outputs are {list(OUTPUTS)}; asked for {preview(names[:8])}."
        )
    binary = {
        o["name"] for o in requested if _params(o, f'output "{o["name"]}"').get("binary_data", all_binary) is True
    }
    return tuple(dict.fromkeys(names)), frozenset(binary)


def _shape(shape) -> list[int]:
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise bad_request(
            "bad_shape", f'The input\'s "shape" must be a list of non-negative integers, got {preview(shape)}.'
        )
    return shape


def _data(tensor: dict, binary: memoryview | None):
    """The input's data: a JSON list, or its bytes from the binary part."""
    size = _params(tensor, "the input").get("binary_data_size")
    if size is None:
        if "data" not in tensor:
            raise bad_request("missing_data", 'The input has neither "data" nor parameters.binary_data_size.')
        return tensor["data"]
    if binary is None or not isinstance(size, int) or size < 0 or size > len(binary):
        raise bad_request(
            "bad_binary_data",
            f"binary_data_size {preview(size)} does not fit the "
            f"{0 if binary is None else len(binary)} bytes after the JSON header.",
        )
    return binary[:size]


def _count(n: int, shape: list[int], limits) -> int:
    """`n` images in a tensor of `shape`, checked against the request limit."""
    if n < 1:
        raise bad_request("bad_shape", f"The input holds no image (shape {shape}).")
    if n > limits.max_images:
        raise too_large(
            "too_many_images", f"A request may hold at most {limits.max_images} images; this one holds {n}."
        )
    return n


def _encoded_images(data, shape: list[int], limits) -> list[bytes]:
    n = _count(math.prod(shape), shape, limits)
    if isinstance(data, memoryview):
        elements = _bytes_elements(data)
        to_image = lambda e: image_bytes(e, limits.max_bytes)  # noqa: E731  raw image, or base64 in binary
    else:
        elements = _flatten(data)
        if not all(isinstance(e, str) for e in elements):
            raise bad_request("bad_data", "BYTES data in JSON must be base64 strings, one per image.")
        # base64 of base64 is unwrapped too: KServe's grpc-v2 wrapper encodes a REST client's
        # base64 string once more on its way to TorchServe's gRPC API
        to_image = lambda e: image_bytes(decode_base64(e.encode(), limits.max_bytes), limits.max_bytes)  # noqa: E731
    if len(elements) != n:
        hint = WRAPPER_HINT if len(elements) == 1 and n > 1 else ""
        raise bad_request(
            "bad_shape", f"The input's shape {preview(shape)} holds {n} elements; its data holds {len(elements)}.{hint}"
        )
    images = []
    for i, item in enumerate(elements):
        try:
            images.append(to_image(item))
        except RequestError as err:
            raise err.at(element(OIP, i, n)) from None
    return images


def _bytes_elements(data: memoryview) -> list[bytes]:
    """The binary extension's BYTES tensor: elements as 4-byte little-endian length + bytes."""
    elements, offset = [], 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise bad_request("bad_binary_data", "The binary BYTES data ends inside an element's length.")
        (size,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if offset + size > len(data):
            raise bad_request(
                "bad_binary_data", f"A binary BYTES element says {size} bytes; {len(data) - offset} remain."
            )
        elements.append(bytes(data[offset : offset + size]))
        offset += size
    return elements


def _flatten(data, depth: int = 0) -> list:
    """Nested lists -> their items in order, at most MAX_DEPTH lists deep (a parsed document
    may come from TorchServe's own JSON parser, which allows far deeper nesting)."""
    if not isinstance(data, list):
        return [data]
    if depth >= MAX_DEPTH:
        raise bad_request("bad_json", f"The input's data nests lists more than {MAX_DEPTH} levels deep.")
    if any(isinstance(d, list) for d in data):
        return [e for d in data for e in _flatten(d, depth + 1)]
    return data


def _pixel_images(data, shape: list[int], limits) -> list[torch.Tensor]:
    if len(shape) == 3:
        shape = [1, *shape]
    if len(shape) != 4 or shape[3] != 3:
        raise bad_request("bad_shape", f"UINT8 pixels must have shape [N, H, W, 3], got {shape}.")
    n, h, w, _ = shape
    _count(n if h * w else 0, shape, limits)
    if h * w > limits.max_pixels:
        raise too_large(
            "too_many_pixels", f"The pixels are {w}x{h}; this model accepts at most {limits.max_pixels} pixels."
        )
    expected = n * h * w * 3
    if isinstance(data, memoryview):
        if len(data) != expected:
            raise bad_request("bad_shape", f"Shape {shape} needs {expected} bytes of UINT8 data; got {len(data)}.")
        pixels = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    else:
        values = _flatten(data)
        if len(values) != expected:
            raise bad_request("bad_shape", f"Shape {shape} needs {expected} values; got {len(values)}.")
        try:
            pixels = torch.tensor(values, dtype=torch.int64)
        except (TypeError, ValueError, RuntimeError):
            raise bad_request("bad_data", "UINT8 data must be integers from 0 to 255.") from None
        if pixels.numel() and (pixels.min() < 0 or pixels.max() > 255):
            raise bad_request("bad_data", "UINT8 data must be integers from 0 to 255.")
        pixels = pixels.to(torch.uint8)
    return list(pixels.view(n, h, w, 3).permute(0, 3, 1, 2).unbind(0))


def response(request: Request, rows: list[list[dict]], model_name: str, version: str) -> tuple[bytes, dict]:
    """Top-k rows of the request's images -> (body, headers): JSON, or JSON + binary outputs."""
    n, k = len(rows), len(rows[0]) if rows else 0
    columns = {name: [entry[name] for row in rows for entry in row] for name in OUTPUTS}
    outputs, chunks = [], []
    for name in request.outputs:
        tensor = {"name": name, "datatype": DATATYPES[name], "shape": [n, k]}
        if name in request.binary:
            chunk = _binary(name, columns[name])
            tensor["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            tensor["data"] = columns[name]
        outputs.append(tensor)
    body = {"model_name": model_name, "model_version": version, "outputs": outputs}
    if request.id is not None:
        body = {"id": request.id, **body}
    header = json.dumps(body, separators=(",", ":")).encode()
    if not chunks:
        return header, {"content-type": "application/json"}
    return header + b"".join(chunks), {
        "content-type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }


def _binary(name: str, values: list) -> bytes:
    if name == "label":
        encoded = [v.encode() for v in values]
        return b"".join(struct.pack("<I", len(e)) + e for e in encoded)
    return struct.pack(f"<{len(values)}{_STRUCT[name]}", *values)
