"""TensorFlow 'SAME' convolutions made static for the one input size the handler serves.

timm's `tf_*` models (EfficientNet(-Lite), MixNet, MobileNetV3, ... ported from TensorFlow)
pad every strided convolution at run time: `F.pad` copies the whole activation into a
zero-filled tensor one pixel larger, then the convolution runs unpadded. The padding is
asymmetric (one pixel more after than before), which `nn.Conv2d` cannot express, and the copy
also cuts the oneDNN fusion of the frozen graph. On EfficientNet-Lite0 that copy was 9% of a CPU
worker's time.

The handler always feeds crop x crop images, so each such convolution sees one input size and
its padding (before, after) is fixed. With after = before + 1 it is the same sum as a
convolution one tap wider whose first tap is zero, padded (after, after) symmetrically:

    out[j] = sum_t w[t] x[s*j - before + t]  =  sum_t' w'[t'] x[s*j - after + t'],
    w' = [0, w[0], ..., w[k-1]],  t' = t + 1,

with the same zeros beyond both edges and the same output size. `make_static` swaps those
modules for plain `nn.Conv2d`s and checks the model's logits are unchanged (exactly equal on
the default model) before keeping them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from handlers.model.graph import check_same

try:
    from timm.layers.conv2d_same import Conv2dSame, Conv2dSameExport
    from timm.layers.padding import get_same_padding

    SAME_CONVS: tuple = (Conv2dSame, Conv2dSameExport)
except ImportError:  # without timm no module pads this way
    SAME_CONVS = ()


def make_static(model: nn.Module, size: int | tuple[int, int], check=None) -> int:
    """Swap `model`'s dynamic-SAME convolutions for static ones at input size (size x size, or
    (H, W)), in place.

    `check(expected, actual)` (default: handlers.graph.check_same, as for the frozen graph)
    raises if the logits moved; the swap is then undone and re-raised.
    Returns how many convolutions were swapped (0 for models without such layers).
    """
    if not SAME_CONVS or isinstance(model, torch.jit.ScriptModule):
        return 0
    inputs = _input_sizes(model, size)
    swaps = []
    for name, (conv, hw) in inputs.items():
        static = static_conv(conv, hw)
        if static is not None:
            swaps.append((name, conv, static))
    if not swaps:
        return 0
    check = check or (lambda expected, actual: check_same(expected, actual, "static padding"))
    x = _example(model, size)
    with torch.inference_mode():
        expected = model(x)
        for name, _, static in swaps:
            _set(model, name, static)
        try:
            check(expected, model(x))
        except Exception:
            for name, conv, _ in swaps:
                _set(model, name, conv)
            raise
    return len(swaps)


def static_conv(conv: nn.Conv2d, input_hw: tuple[int, int]) -> nn.Conv2d | None:
    """The plain Conv2d computing `conv` (SAME padding) at this input size, or None when none
    does (dilated kernels, whose extra tap would not fall on the grid)."""
    pads = []
    for dim, n in enumerate(input_hw):
        total = get_same_padding(int(n), conv.kernel_size[dim], conv.stride[dim], conv.dilation[dim])
        before, after = total // 2, total - total // 2
        if after != before and conv.dilation[dim] != 1:
            return None
        pads.append((before, after))
    (top, bottom), (left, right) = pads
    kernel = (conv.kernel_size[0] + bottom - top, conv.kernel_size[1] + right - left)
    static = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        kernel,
        conv.stride,
        (bottom, right),
        conv.dilation,
        conv.groups,
        conv.bias is not None,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    layout = torch.channels_last if _channels_last(conv.weight) else torch.contiguous_format
    with torch.no_grad():
        static.weight = nn.Parameter(
            F.pad(conv.weight, (right - left, 0, bottom - top, 0)).contiguous(memory_format=layout), requires_grad=False
        )
        if conv.bias is not None:
            static.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
    return static.train(conv.training)


def _input_sizes(model: nn.Module, size) -> dict[str, tuple[nn.Conv2d, tuple[int, int]]]:
    """name -> (module, input (H, W)) of every dynamic-SAME convolution, from one forward pass."""
    found = {}
    hooks = [
        m.register_forward_pre_hook(lambda m, args, name=name: found.__setitem__(name, (m, tuple(args[0].shape[-2:]))))
        for name, m in model.named_modules()
        if isinstance(m, SAME_CONVS)
    ]
    if not hooks:
        return {}
    try:
        with torch.inference_mode():
            model(_example(model, size)[:1])
    finally:
        for hook in hooks:
            hook.remove()
    return found


def _example(model: nn.Module, size) -> torch.Tensor:
    param = next(model.parameters())
    gen = torch.Generator().manual_seed(0)
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(2, 3, h, w, generator=gen).to(param.device, param.dtype)


def _channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)
