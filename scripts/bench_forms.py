"""Request bodies for `make bench`'s protocol runs: the same photos as a raw body, as base64 JSON,
and in the Open Inference Protocol's JSON and binary forms, posted where each client posts them."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.http as triton

FORMS = ("raw", "base64_json", "oip_json", "oip_binary")


@dataclass(frozen=True)
class Form:
    files: list[Path]
    content_type: str
    json_sizes: list[int] | None  # Inference-Header-Content-Length per file (binary extension)
    route: str  # after the inference address, {model} filled in

    def url(self, base: str, model: str) -> str:
        return base + self.route.format(model=model)


def build_form(form: str, photos: list[Path], out: Path) -> Form:
    """Write each photo's request body in `form` to out/<form>/."""
    if form == "raw":
        return Form(photos, "application/octet-stream", None, "/predictions/{model}")
    folder = out / form
    folder.mkdir(parents=True, exist_ok=True)
    files, sizes = [], []
    for photo in photos:
        data = photo.read_bytes()
        if form == "base64_json":
            body = json.dumps({"image": base64.b64encode(data).decode()}).encode()
        elif form in ("oip_json", "oip_binary"):
            binary = form == "oip_binary"
            tensor = triton.InferInput("image", [1], "BYTES")
            value = data if binary else base64.b64encode(data).decode()
            tensor.set_data_from_numpy(np.array([value], dtype=object), binary_data=binary)
            outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probability", "index")]
            body, size = triton.InferenceServerClient.generate_request_body([tensor], outputs=outputs)
            sizes.append(size)
        else:
            raise ValueError(f"unknown request form {form!r}; known: {FORMS}")
        path = folder / photo.name
        path.write_bytes(body)
        files.append(path)
    route = "/predictions/{model}" if form == "base64_json" else "/v2/models/{model}/infer"
    content_type = "application/octet-stream" if form == "oip_binary" else "application/json"
    return Form(files, content_type, sizes if form == "oip_binary" else None, route)
