"""Helpers for the protocol tests: requests built by tritonclient's own encoder, answers read back."""

from __future__ import annotations

import base64

import numpy as np
import tritonclient.http as triton

from tests.conftest import labelled_photos


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def triton_input(images: list[bytes], binary: bool, name: str = "image") -> triton.InferInput:
    """A BYTES input of encoded images: raw in the binary extension, base64 in JSON."""
    tensor = triton.InferInput(name, [len(images)], "BYTES")
    tensor.set_data_from_numpy(
        np.array(images if binary else [b64(i) for i in images], dtype=object), binary_data=binary
    )
    return tensor


def first_labels(result) -> list[str]:
    """Each image's top-1 label from a tritonclient InferResult."""
    return [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label")[:, 0]]


def assert_acceptable(labels: list[str], names: list[str]) -> None:
    assert len(labels) == len(names)
    for label, name in zip(labels, names):
        assert label in labelled_photos()[name], (name, label)
