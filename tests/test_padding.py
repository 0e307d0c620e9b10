"""TF-'SAME' convolutions padded statically: the same outputs, plain Conv2d modules."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.layers.conv2d_same import Conv2dSame
from torch import nn

from handlers.model.checkpoint import load_classifier
from handlers.model.graph import check_same
from handlers.model.padding import make_static, static_conv

CPU = torch.device("cpu")


def strict(expected, actual):
    check_same(expected, actual, "test", tolerance=1e-5)


@pytest.mark.parametrize("size", [224, 225, 7, 1])
@pytest.mark.parametrize("kernel, stride, groups", [(3, 2, 1), (5, 2, 8), (3, 1, 8), (4, 2, 1), (1, 2, 1), (7, 3, 1)])
def test_static_conv_computes_what_the_dynamic_one_does(size, kernel, stride, groups):
    torch.manual_seed(0)
    same = Conv2dSame(8, 16, kernel, stride, groups=groups).eval()
    x = torch.randn(2, 8, size, size + 3)  # H and W differ: each gets its own padding
    static = static_conv(same, tuple(x.shape[-2:]))
    assert type(static) is nn.Conv2d
    with torch.no_grad():
        expected, actual = same(x), static(x)
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max() < 1e-5


def test_asymmetric_padding_of_a_dilated_kernel_is_left_dynamic():
    same = Conv2dSame(4, 4, 3, stride=2, dilation=2)
    assert static_conv(same, (10, 10)) is None  # padding 5 = 2 before + 3 after, taps 2 apart


def test_default_model_loses_its_run_time_pads_and_keeps_its_logits(default_checkpoint):
    model, info = load_classifier(default_checkpoint, CPU, channels_last=True)
    x = torch.randn(3, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        before = model(x)
    assert make_static(model, info.recipe.crop_size, strict) == 5  # the stem and 4 strided depthwise convs
    assert not any(isinstance(m, Conv2dSame) for m in model.modules())
    with torch.inference_mode():
        after = model(x)
    assert torch.equal(before.argmax(1), after.argmax(1)) and (before - after).abs().max() < 1e-4
    graph = torch.jit.freeze(torch.jit.trace(model.eval(), x))
    kinds = {n.kind() for n in graph.graph.nodes()}
    assert "aten::pad" not in kinds and "aten::constant_pad_nd" not in kinds


def test_a_model_without_same_padding_is_left_alone():
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    assert make_static(model, 64, strict) == 0


def test_a_failed_check_puts_the_dynamic_convolutions_back():
    model = timm.create_model("tf_mobilenetv3_small_minimal_100", pretrained=False, num_classes=10).eval()
    count = sum(isinstance(m, Conv2dSame) for m in model.modules())
    assert count > 0

    def refuse(expected, actual):
        raise ValueError("logits moved")

    with pytest.raises(ValueError, match="logits moved"):
        make_static(model, 96, refuse)
    assert sum(isinstance(m, Conv2dSame) for m in model.modules()) == count
