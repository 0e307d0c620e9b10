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


def single_threaded_torch() -> None:
    """ThreadPoolExecutor initializer for threads that call torch beside the forward pass.

    With OpenMP (libgomp, as in PyTorch's Linux wheels) each thread that reaches a parallel
    region gets its own team of `torch.get_num_threads()` OpenMP threads. Decoding threads that
    resize with torch would each add a team, the process would hold more OpenMP threads than
    cores, and libgomp then stops spinning between operators: the forward pass's OpenMP thread
    sleeps and wakes on every operator. One torch thread per decoding thread keeps a single
    team, the forward pass's. Decoding threads work
    on different images, so nothing is lost to running each serially. Threads that already
    ran torch (the worker's main thread) keep their count; threads that first use torch after
    this call start with one (torch keeps the last count set as the default for new threads).
    """
    torch.set_num_threads(1)
