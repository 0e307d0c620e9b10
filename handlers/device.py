"""Which device a worker runs on, from what TorchServe assigned."""

from __future__ import annotations

import torch


def select_device(gpu_id) -> torch.device:
    """`cuda:<gpu_id>` when CUDA is available and TorchServe assigned a GPU, else the CPU."""
    if gpu_id is not None and torch.cuda.is_available():
        device = torch.device("cuda", int(gpu_id))
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def memory_stats(device: torch.device) -> dict:
    """GPU memory allocated/reserved in MiB on CUDA; empty on the CPU."""
    if device.type != "cuda":
        return {}
    mib = 1024 * 1024
    return {
        "gpu_memory_allocated_mib": round(torch.cuda.memory_allocated(device) / mib, 1),
        "gpu_memory_reserved_mib": round(torch.cuda.memory_reserved(device) / mib, 1),
    }
