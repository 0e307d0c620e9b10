"""What one request asks for, once read: its protocol, images and top-k; and the limits it is read under."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import RequestError, bad_request, preview

PLAIN, KSERVE_V1, OIP = "plain", "kserve_v1", "oip"
OUTPUTS = ("label", "probability", "index")  # what the Open Inference Protocol answers, in order
_ASCII_INT = re.compile(r"^[ \t]*\+?[0-9]{1,9}[ \t]*$")


@dataclass(frozen=True)
class Limits:
    """What one request may hold, from the handler's settings."""

    max_bytes: int  # per encoded image
    max_images: int  # per request
    max_pixels: int  # per image
    topk: int = 5  # labels per image unless the request asks
    max_topk: int = 100  # the largest k a request may ask for (at most the model's label count)
    binary_outputs: bool = True  # OIP answers in the binary extension where asked (not behind KServe's wrapper)

    def resolve_topk(self, asked, header: str | None = None) -> int:
        """The request's k: what its body asked for (the body's own field or its protocol's
        parameters), else its X-TopK header, else the default; an int or ASCII digits in
        1..max_topk, anything else is 400 bad_topk."""
        value = header if asked is None else asked
        if value is None or value == "":
            return self.topk
        if isinstance(value, int) and not isinstance(value, bool):
            k = value
        elif isinstance(value, str) and _ASCII_INT.match(value):  # int() would also take "３" or "٣"
            k = int(value)
        else:
            k = None
        if k is None or not 1 <= k <= self.max_topk:
            raise bad_request("bad_topk", f"topk must be an integer from 1 to {self.max_topk}, got {preview(value)}.")
        return k


@dataclass(frozen=True)
class Request:
    """One request, read: `images` hold encoded bytes or uint8 [3, H, W] pixel tensors."""

    protocol: str
    images: tuple
    topk: int
    id: str | None = None  # OIP: echoed in the answer
    outputs: tuple = OUTPUTS  # OIP: the outputs asked for, in order
    binary: frozenset = frozenset()  # OIP: outputs answered in the binary extension

    def image_error(self, index: int, err: RequestError) -> RequestError:
        """The error of image `index` as this request's, naming the image in the KServe protocols."""
        err = err.answered_in(self.protocol)
        return err if self.protocol == PLAIN else err.at(element(self.protocol, index, len(self.images)))


def element(protocol: str, index: int, count: int) -> str:
    """How a protocol names one image of a request in an error: "instance 2 of 3" (KServe v1),
    "input element 2 of 3" (the Open Inference Protocol)."""
    return f"{'instance' if protocol == KSERVE_V1 else 'input element'} {index} of {count}"
