"""Model registry, the shared BirdstackNet interface and first-layer adaptation (no weights).

The spectrogram CNNs are tested here; the heads on BirdNET windows in test_birdnet.py.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from birdstack.config import ConfigError, ModelConfig
from birdstack.models import (
    BirdstackNet,
    ModelConfigError,
    adapt_first_conv,
    create_model,
    create_model_from_config,
    first_conv_name,
    fresh_first_conv,
    is_model,
    list_models,
)
from birdstack.utils import BirdstackError

HAS_TIMM = importlib.util.find_spec("timm") is not None


def _needs(name: str) -> None:
    if name == "efficientnet_lite0" and not HAS_TIMM:
        pytest.skip("efficientnet_lite0 needs the [lite] extra (timm)")


def test_registry_lists_all_models() -> None:
    names = list_models()
    assert names == sorted(names)
    expected = {"mobilenet_compact", "resnet18", "resnet34", "resnet50"}
    expected |= {"mobilenet_v2", "efficientnet_b0", "efficientnet_lite0"}
    assert expected <= set(names)
    assert "mobilenet_compact" not in list_models(pretrained=True)
    assert "resnet18" in list_models(pretrained=True)
    assert is_model("resnet18") and not is_model("resnet19")
    assert set(list_models(frontend="birdnet")) == {
        "birdnet_linear", "birdnet_mlp", "birdnet_fused", "birdnet_scores"
    }  # fmt: skip
    assert not set(CNNS) & set(list_models(frontend="birdnet"))


CNNS = list_models(frontend="logmel")


@pytest.mark.parametrize("in_chans", [1, 3, 10])
@pytest.mark.parametrize("name", CNNS)
def test_forward_backward(name: str, in_chans: int) -> None:
    _needs(name)
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, in_chans=in_chans)
    assert isinstance(model, BirdstackNet)
    x = torch.randn(2, in_chans, 128, 96)
    logits = model(x)
    assert logits.shape == (2, 5)
    assert torch.isfinite(logits).all()
    emb = model.forward_features(x)
    assert emb.shape == (2, model.num_features)
    logits.logsumexp(1).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    conv = model.get_submodule(model.first_conv)
    assert isinstance(conv, nn.Conv2d) and conv.in_channels == in_chans
    assert f"backbone.{first_conv_name(model.backbone)}" == model.first_conv
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert model.get_classifier() is model.classifier
    assert model.classifier.out_features == 5


def test_first_conv_names() -> None:
    expect = {
        "resnet18": "backbone.conv1",
        "resnet50": "backbone.conv1",
        "mobilenet_v2": "backbone.features.0.0",
        "efficientnet_b0": "backbone.features.0.0",
        "mobilenet_compact": "backbone.features.0.0",
    }
    for name, first in expect.items():
        assert create_model(name, num_classes=2, in_chans=4).first_conv == first


def test_mobilenet_compact_architecture() -> None:
    model = create_model("mobilenet_compact", num_classes=6, in_chans=10)
    assert sum(p.numel() for p in model.parameters()) == 187_494
    assert model.num_features == 64
    stem = model.backbone.features[0]
    assert (stem[0].in_channels, stem[0].out_channels) == (10, 32)
    assert stem[0].stride == (2, 2) and isinstance(stem[2], nn.ReLU6)
    blocks = list(model.backbone.features)[1:]
    assert len(blocks) == 1 + 2 + 3 + 2 + 1
    assert [b.out_channels for b in blocks] == [16, 24, 24, 32, 32, 32, 64, 64, 64]
    assert [b.use_res_connect for b in blocks] == [
        False, False, True, False, True, True, False, True, True
    ]  # fmt: skip
    # overall stride 16: 128x96 -> 8x6 before pooling; no 1x1 conv to 1280
    assert model.backbone.features(torch.zeros(1, 10, 128, 96)).shape == (1, 64, 8, 6)
    assert not any(isinstance(m, nn.Conv2d) and m.out_channels == 1280 for m in model.modules())


def test_dropout_and_reset_classifier() -> None:
    model = create_model("resnet18", num_classes=6, in_chans=10, dropout=0.3)
    assert model.dropout.p == 0.3
    model.reset_classifier(11)
    assert model.num_classes == 11 and model.model_args["num_classes"] == 11
    assert model(torch.randn(2, 10, 64, 64)).shape == (2, 11)
    model.eval()  # dropout off: forward == head(features)
    x = torch.randn(2, 10, 64, 64)
    torch.testing.assert_close(model(x), model.classifier(model.forward_features(x)))


@pytest.mark.parametrize("name", CNNS)
def test_model_args_rebuild_same_architecture(name: str) -> None:
    _needs(name)
    model = create_model(name, num_classes=4, in_chans=7, adapt="copy_random", dropout=0.1)
    args = model.model_args
    assert args["pretrained"] is False and args["weights"] is None
    assert (args["name"], args["num_classes"], args["in_chans"]) == (name, 4, 7)
    again = create_model(**args)
    a, b = model.state_dict(), again.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)
    assert again.dropout.p == 0.1


def test_create_model_from_config() -> None:
    cfg = ModelConfig(name="mobilenet_compact", dropout=0.2)
    model = create_model_from_config(cfg, num_classes=3, in_chans=2)
    assert model.model_args["dropout"] == 0.2 and model.num_classes == 3


def test_unknown_and_invalid_settings() -> None:
    with pytest.raises(BirdstackError, match="unknown model 'resnet19'") as err:
        create_model("resnet19", num_classes=3)
    for known in list_models():
        assert known in str(err.value)
    assert isinstance(err.value, ConfigError)
    with pytest.raises(ModelConfigError, match="no pretrained weights"):
        create_model("mobilenet_compact", num_classes=3, pretrained=True)
    with pytest.raises(ModelConfigError, match="no pretrained weights"):
        create_model("mobilenet_compact", num_classes=3, weights="x.pth")
    with pytest.raises(ModelConfigError, match="adapt='sum'"):
        create_model("resnet18", num_classes=3, adapt="sum")
    with pytest.raises(ModelConfigError, match="num_classes=0"):
        create_model("resnet18", num_classes=0)
    with pytest.raises(ModelConfigError, match="dropout"):
        create_model("resnet18", num_classes=3, dropout=1.0)


# --------------------------------------------------------------------------- adapt_first_conv


def _rgb_conv(bias: bool = True) -> nn.Conv2d:
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 8, kernel_size=7, stride=2, padding=3, bias=bias)
    nn.init.normal_(conv.weight)
    return conv


@pytest.mark.parametrize("n", [1, 3, 10])
@pytest.mark.parametrize("mode", ["mean", "mean_scaled", "copy_random"])
def test_adapt_first_conv_modes(mode: str, n: int) -> None:
    conv = _rgb_conv()
    rgb = conv.weight.detach().clone()
    new = adapt_first_conv(conv, n, mode)
    w = new.weight.detach()
    assert w.shape == (8, n, 7, 7)
    assert (new.stride, new.padding, new.kernel_size) == (conv.stride, conv.padding, (7, 7))
    assert new.in_channels == n and new.out_channels == 8
    torch.testing.assert_close(new.bias, conv.bias)
    if n == 3:
        torch.testing.assert_close(w, rgb)
        return
    mean = rgb.mean(1)
    if mode == "mean":
        for c in range(n):
            torch.testing.assert_close(w[:, c], mean)
    elif mode == "mean_scaled":
        for c in range(n):
            torch.testing.assert_close(w[:, c], mean * 3 / n)
        # a grey input (same on every channel) gives the RGB conv's response
        grey = torch.randn(1, 1, 16, 16)
        out, ref = new(grey.expand(1, n, 16, 16)), conv(grey.expand(1, 3, 16, 16))
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    else:
        k = min(n, 3)
        torch.testing.assert_close(w[:, :k], rgb[:, :k])
        if n > 3:
            extra = w[:, 3:]
            assert not torch.allclose(extra, mean.unsqueeze(1).expand_as(extra))
            assert extra.std() > 0
    assert rgb.equal(conv.weight.detach())  # source untouched


def test_fresh_first_conv() -> None:
    conv = _rgb_conv()
    new = fresh_first_conv(conv, 10)
    assert new.weight.shape == (8, 10, 7, 7) and torch.all(new.bias == 0)
    assert fresh_first_conv(conv, 3) is conv
    # Kaiming normal, fan_out: std = sqrt(2 / (out * k * k))
    big = fresh_first_conv(nn.Conv2d(3, 64, 7, bias=False), 40)
    assert big.weight.std().item() == pytest.approx((2 / (64 * 49)) ** 0.5, rel=0.1)
