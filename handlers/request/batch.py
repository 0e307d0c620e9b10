"""One TorchServe batch from parse to answer: each request, or its error; every image that
decoded, as rows of one uint8 tensor; each request's span of rows; and the logits."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import RequestError
from .request import Request


@dataclass
class Batch:
    """Built by the handler's preprocess, given its logits by inference, answered by postprocess.
    Request i is answered with `errors[i]` where set, else from `logits[spans[i]]`."""

    requests: list  # Request, or None for a request that failed before it was read
    errors: list  # RequestError or None, per request
    pixels: torch.Tensor | None = None  # uint8 [images, 3, H, W], every image of the requests without an error
    spans: list = field(default_factory=list)  # per request: its rows of `pixels` (a slice), or None
    logits: torch.Tensor | None = None  # float32 [images, classes]
    probs: torch.Tensor | None = None  # float32 [images, classes], once answered
    positions: list = field(default_factory=list)  # per request: its place in TorchServe's batch

    def __post_init__(self):
        self.positions = self.positions or list(range(len(self.requests)))

    @classmethod
    def read(cls, results: list) -> Batch:
        """From what reading each request gave: a Request or a RequestError."""
        return cls(
            [r if isinstance(r, Request) else None for r in results],
            [r if isinstance(r, RequestError) else None for r in results],
        )

    def subset(self, indices: list[int]) -> Batch:
        """These requests as a batch of their own (before decoding), keeping their places."""
        return Batch([self.requests[i] for i in indices], [self.errors[i] for i in indices],
                     positions=[self.positions[i] for i in indices])  # fmt: skip

    def __len__(self) -> int:
        return len(self.requests)

    def images(self) -> list:
        """Every image of every request still without an error, in order."""
        return [image for i in self.pending() for image in self.requests[i].images]

    def pending(self) -> list[int]:
        """The requests with no error so far."""
        return [i for i, err in enumerate(self.errors) if err is None]

    def add_pixels(self, decoded: list, device: torch.device) -> None:
        """What decoding gave for `images()`, in the same order (a uint8 [3, H, W] tensor or a
        RequestError each): a request with a failed image takes that image's error; the others'
        pixels become the rows of `pixels` on `device`."""
        rows, at = [], 0
        self.spans = [None] * len(self)
        for i in self.pending():
            request = self.requests[i]
            mine = decoded[at : at + len(request.images)]
            at += len(request.images)
            bad = next((n for n, p in enumerate(mine) if isinstance(p, RequestError)), None)
            if bad is not None:
                self.errors[i] = request.image_error(bad, mine[bad])
                continue
            self.spans[i] = slice(len(rows), len(rows) + len(mine))
            rows.extend(mine)
        if rows:
            self.pixels = torch.stack([p.to(device) for p in rows])

    def fail_pending(self, error: RequestError) -> None:
        """Every request still without an error takes `error` (the batch's pass failed)."""
        for i in self.pending():
            self.errors[i] = error.answered_in(self.requests[i].protocol)
