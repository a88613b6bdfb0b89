"""The study's compact MobileNetV2 (no pretrained weights).

Stem ``Conv3x3(32, stride 2)-BN-ReLU6``, five inverted-residual stages
``[t, c, n, s]`` (expansion, channels, repeats, stride of the first repeat), global
average pool, dropout and a ``Linear`` head. Unlike torchvision's MobileNetV2 there
is no final ``1x1`` convolution to 1280 channels: the embedding has 64 features.
Residual connections are used where input and output shapes match (torchvision's
:class:`~torchvision.models.mobilenetv2.InvertedResidual`).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.ops.misc import Conv2dNormActivation

from birdstack.models.registry import BirdstackNet, ModelArgs, register_model

STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 2, 2),
    (6, 64, 1, 1),
)
STEM_CHANNELS = 32


def mobilenet_compact_backbone(
    in_chans: int,
    stages: tuple[tuple[int, int, int, int], ...] = STAGES,
    stem_channels: int = STEM_CHANNELS,
) -> tuple[nn.Sequential, int]:
    """``(backbone, num_features)``: stem, inverted residuals, global pool, flatten."""
    layers: list[nn.Module] = [
        Conv2dNormActivation(
            in_chans, stem_channels, kernel_size=3, stride=2, activation_layer=nn.ReLU6
        )
    ]
    channels = stem_channels
    for t, c, n, s in stages:
        for i in range(n):
            layers.append(InvertedResidual(channels, c, s if i == 0 else 1, expand_ratio=t))
            channels = c
    backbone = nn.Sequential(
        OrderedDict(
            features=nn.Sequential(*layers),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(1),
        )
    )
    for m in backbone.modules():  # torchvision's MobileNetV2 initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return backbone, channels


@register_model
def mobilenet_compact(args: ModelArgs) -> BirdstackNet:
    """The study's compact MobileNetV2 (about 187k parameters for 10 channels, 6 classes)."""
    backbone, num_features = mobilenet_compact_backbone(args.in_chans)
    return BirdstackNet(
        backbone,
        num_features,
        args.num_classes,
        args.in_chans,
        args.dropout,
        first_conv="backbone.features.0.0",
    )
