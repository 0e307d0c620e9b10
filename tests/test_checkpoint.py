import pytest
import torch

from handlers.model.checkpoint import assert_inference_ready, build_architecture, load_classifier, read_checkpoint
from handlers.model.recipe import Recipe
from modeltools.save import save_checkpoint

LABELS = [f"class {i}" for i in range(3)]


def small_checkpoint(path, **overrides):
    model = build_architecture("torchvision:resnet18", num_classes=3)
    args = dict(
        state_dict=model.state_dict(),
        architecture="torchvision:resnet18",
        recipe=Recipe(64, 72),
        labels=LABELS,
        version="0.1",
    )
    args.update(overrides)
    save_checkpoint(path, **args)
    return path


def test_round_trip_loads_in_eval_mode(tmp_path):
    model, info = load_classifier(small_checkpoint(tmp_path / "m.pt"), torch.device("cpu"))
    assert info.labels == tuple(LABELS) and info.recipe.crop_size == 64 and info.version == "0.1"
    assert_inference_ready(model)
    with torch.inference_mode():
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 3)


def test_default_checkpoint_is_weights_only_loadable(default_checkpoint):
    ckpt = torch.load(default_checkpoint, weights_only=True)
    assert ckpt["architecture"] == "timm:tf_efficientnet_lite0"
    assert len(ckpt["labels"]) == 1000 and ckpt["labels"][281] == "tabby"


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "ts-image-classifier/1", "payload": object()}, path)
    with pytest.raises(ValueError, match="weights_only"):
        read_checkpoint(path)


def test_a_training_checkpoint_is_refused_with_the_command_that_converts_it(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="not a ts-image-classifier/1 checkpoint") as refused:
        read_checkpoint(path)
    assert f"scripts/convert_checkpoint.py --input {path}" in str(refused.value)


def test_a_label_count_that_does_not_fit_the_classifier_names_both_counts(tmp_path):
    path = small_checkpoint(tmp_path / "m.pt", labels=LABELS + ["extra"])
    with pytest.raises(ValueError) as refused:
        load_classifier(path, torch.device("cpu"))
    message = str(refused.value)
    assert f"has {len(LABELS) + 1} labels, but its classifier (fc.weight) has {len(LABELS)} outputs" in message
    assert "\n" not in message


def test_weights_of_another_architecture_are_refused_in_one_line(tmp_path):
    sd = build_architecture("torchvision:resnet18", num_classes=len(LABELS)).state_dict()
    path = small_checkpoint(tmp_path / "m.pt", state_dict=sd)
    ckpt = torch.load(path, weights_only=True)
    ckpt["architecture"] = "torchvision:resnet34"
    torch.save(ckpt, path)
    with pytest.raises(ValueError) as refused:
        load_classifier(path, torch.device("cpu"))
    message = str(refused.value)
    assert "the weights are not torchvision:resnet34's" in message and "missing (first: layer1.2." in message
    assert "\n" not in message and len(message) < 400


def test_missing_keys_are_named(tmp_path):
    sd = build_architecture("torchvision:resnet18", num_classes=3).state_dict()
    sd.pop("fc.bias")
    with pytest.raises(ValueError, match="fc.bias"):
        load_classifier(small_checkpoint(tmp_path / "m.pt", state_dict=sd), torch.device("cpu"))


def test_unknown_architecture():
    with pytest.raises(ValueError, match="unknown"):
        build_architecture("timm:no_such_net", 3)
    with pytest.raises(ValueError, match="unknown"):
        build_architecture("nonsense_arch_xyz", 3)


def test_train_mode_is_refused():
    model = build_architecture("torchvision:resnet18", num_classes=3)
    model.eval().requires_grad_(False)
    model.layer1.train()
    with pytest.raises(RuntimeError, match="eval mode"):
        assert_inference_ready(model)
    model.eval().requires_grad_(True)
    with pytest.raises(RuntimeError, match="require grad"):
        assert_inference_ready(model)
