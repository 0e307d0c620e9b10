"""One TorchServe batch on its way through the handler."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Batch:
    """One TorchServe batch on its way through: per-request answers, good items' pixels."""

    answers: list  # per request: an InputError, or None until predicted
    topk: list  # per request
    good: list = field(default_factory=list)  # request indices, in the order of `pixels`
    pixels: torch.Tensor | None = None  # uint8 [len(good), 3, H, W]
    logits: torch.Tensor | None = None
