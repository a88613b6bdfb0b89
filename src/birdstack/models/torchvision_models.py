"""torchvision backbones, optionally ImageNet-pretrained.

Pretrained weights come from torchvision's weights API (downloaded once into
``torch.hub.get_dir()/checkpoints``, i.e. ``$TORCH_HOME/hub/checkpoints``) or from a
local state_dict file of the same torchvision model (``weights=PATH``). Without a
network and without the cached file the error says which file to put where.
torchvision's own head (and its dropout) is replaced by the :class:`BirdstackNet` head.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models import WeightsEnum

from birdstack.models.adapt import replace_first_conv
from birdstack.models.registry import (
    BirdstackNet,
    ModelArgs,
    describe,
    load_matching,
    load_state_dict_file,
    register_model,
    wrap_backbone,
)
from birdstack.utils import BadInputError, BirdstackError


def weights_file_name(weights: WeightsEnum) -> str:
    """File name torch's hub cache uses for ``weights`` (the last part of its URL)."""
    return os.path.basename(urlparse(weights.url).path)


def hub_checkpoint_path(weights: WeightsEnum) -> Path:
    """Where the hub cache keeps ``weights``: ``torch.hub.get_dir()/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / weights_file_name(weights)


def load_torchvision_weights(weights: WeightsEnum, model_name: str) -> dict[str, torch.Tensor]:
    """State dict of ``weights`` from the hub cache, downloading it if needed.

    Raises :class:`BirdstackError` telling where to put the file when it cannot be
    downloaded.
    """
    cached = hub_checkpoint_path(weights)
    try:
        return weights.get_state_dict(progress=True, map_location="cpu", weights_only=True)
    except OSError as e:  # URLError, HTTPError, timeouts, connection errors
        raise BirdstackError(
            f"could not download the pretrained weights of {model_name} ({weights}) from "
            f"{weights.url}: {e}. Without network access, download that file elsewhere and place "
            f"it as {cached.name} in the folder {cached.parent} (torch.hub.get_dir()/checkpoints, "
            f"set by TORCH_HOME), or pass --weights PATH (model.weights=PATH) to a state_dict .pth "
            f"of torchvision's {model_name}."
        ) from e
    except Exception as e:  # noqa: BLE001 - a cached file that cannot be unpickled
        if cached.exists():
            raise BadInputError(
                cached,
                f"cached weights of {model_name} cannot be read ({describe(e)}); delete the "
                f"file to download it again, or replace it with a copy of {weights.url}",
            ) from e
        raise


def build_torchvision(
    args: ModelArgs,
    constructor: Callable[..., nn.Module],
    weights: WeightsEnum,
    head: str,
) -> BirdstackNet:
    """Wrap torchvision ``constructor`` as a :class:`BirdstackNet`.

    ``head`` is the attribute holding the ImageNet classifier (``fc`` for ResNets,
    ``classifier`` for MobileNetV2 / EfficientNet, whose last layer is the Linear).
    """
    net = constructor(weights=None)
    source = None
    if args.pretrained:
        if args.weights is not None:
            source = str(Path(args.weights).expanduser())
            state = load_state_dict_file(source)
        else:
            source = f"torchvision:{weights}"
            state = load_torchvision_weights(weights, args.name)
        load_matching(net, state, source, f"torchvision's {args.name}")
    first = replace_first_conv(net, args.in_chans, args.pretrained, args.adapt)
    old_head = getattr(net, head)
    linear = old_head[-1] if isinstance(old_head, nn.Sequential) else old_head
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"{args.name}.{head} does not end with a Linear layer")
    setattr(net, head, nn.Identity())
    return wrap_backbone(net, linear, args, first, source)


@register_model(pretrained=True)
def resnet18(args: ModelArgs) -> BirdstackNet:
    """ResNet-18 (ImageNet weights ``IMAGENET1K_V1``)."""
    return build_torchvision(args, tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1, "fc")


@register_model(pretrained=True)
def resnet34(args: ModelArgs) -> BirdstackNet:
    """ResNet-34 (ImageNet weights ``IMAGENET1K_V1``)."""
    return build_torchvision(args, tvm.resnet34, tvm.ResNet34_Weights.IMAGENET1K_V1, "fc")


@register_model(pretrained=True)
def resnet50(args: ModelArgs) -> BirdstackNet:
    """ResNet-50 (ImageNet weights ``IMAGENET1K_V2``)."""
    return build_torchvision(args, tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V2, "fc")


@register_model(pretrained=True)
def mobilenet_v2(args: ModelArgs) -> BirdstackNet:
    """torchvision's full MobileNetV2 (ImageNet weights ``IMAGENET1K_V2``)."""
    weights = tvm.MobileNet_V2_Weights.IMAGENET1K_V2
    return build_torchvision(args, tvm.mobilenet_v2, weights, "classifier")


@register_model(pretrained=True)
def efficientnet_b0(args: ModelArgs) -> BirdstackNet:
    """EfficientNet-B0 (ImageNet weights ``IMAGENET1K_V1``)."""
    weights = tvm.EfficientNet_B0_Weights.IMAGENET1K_V1
    return build_torchvision(args, tvm.efficientnet_b0, weights, "classifier")
