"""Decoded requests and logits -> one answer per request, in order: top-k labels or the request's error."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Decoded:
    """One request ready for the engine: its images' pixels and how many labels it asked for."""

    pixels: list  # uint8 [3, crop, crop] per image
    topk: int


def answers(requests: list, logits: torch.Tensor | None, labels) -> list:
    """Per request (a Decoded or an InputError): one top-k list per image, or its InputError
    unchanged. `logits` holds one row per image of the Decoded requests, in order."""
    ks = [r.topk for r in requests if isinstance(r, Decoded) for _ in r.pixels]
    rows = iter(top_k(logits, labels, ks) if ks else [])
    return [[next(rows) for _ in r.pixels] if isinstance(r, Decoded) else r for r in requests]


def top_k(logits: torch.Tensor, labels, ks: list[int]) -> list[list[dict]]:
    """logits [N, C] (any float dtype/device) -> per row, its k best {label, index, probability}."""
    probs = torch.softmax(logits.float(), dim=1)
    k_max = min(max(ks), probs.shape[1])
    values, indices = probs.topk(k_max, dim=1)
    values, indices = values.cpu().tolist(), indices.cpu().tolist()
    return [
        [
            {"label": labels[i], "index": i, "probability": round(p, 6)}
            for p, i in zip(row_p[:k], row_i[:k])
        ]
        for row_p, row_i, k in zip(values, indices, ks)
    ]
