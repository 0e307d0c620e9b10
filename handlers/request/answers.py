"""Class probabilities -> top-k labels per image: the answer every protocol writes in its own form."""

from __future__ import annotations

import torch


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """logits [N, C] (any float dtype/device) -> softmax in float32."""
    return torch.softmax(logits.float(), dim=1)


def top_k(probs: torch.Tensor, labels, ks: list[int]) -> list[list[dict]]:
    """probabilities [N, C] -> per row, its k best {label, index, probability}."""
    k_max = min(max(ks), probs.shape[1])
    values, indices = probs.topk(k_max, dim=1)
    values, indices = values.cpu().tolist(), indices.cpu().tolist()
    return [
        [{"label": labels[i], "index": i, "probability": round(p, 6)} for p, i in zip(row_p[:k], row_i[:k])]
        for row_p, row_i, k in zip(values, indices, ks)
    ]
