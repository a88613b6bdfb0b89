"""Adapting a network's first convolution to ``N`` input channels.

With pretrained weights the RGB filters are reused (never re-initialised)::

    >>> rgb = nn.Conv2d(3, 8, 3)
    >>> conv = adapt_first_conv(rgb, 10, "mean")
    >>> conv.weight.shape
    torch.Size([8, 10, 3, 3])
    >>> torch.allclose(conv.weight[:, 4], rgb.weight.mean(1))
    True

Without pretrained weights :func:`fresh_first_conv` simply makes a new
convolution with ``N`` inputs.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from birdstack.models.registry import ADAPT_MODES, ModelConfigError


def _with_weight(conv: nn.Conv2d, weight: torch.Tensor) -> nn.Conv2d:
    """Copy of ``conv`` (same class, e.g. timm's ``Conv2dSame``) with a new weight."""
    new = copy.deepcopy(conv)
    new.in_channels = weight.shape[1]
    new.weight = nn.Parameter(weight.contiguous())
    return new


def adapt_first_conv(conv: nn.Conv2d, in_chans: int, mode: str = "mean") -> nn.Conv2d:
    """A copy of the pretrained ``conv`` taking ``in_chans`` inputs, built from its RGB filters.

    - ``mean``: the filters averaged over the input channels, replicated ``in_chans``
      times (the study's default).
    - ``mean_scaled``: as ``mean`` times ``3 / in_chans`` so that the response to an
      input that is the same on all channels is kept (as timm's ``adapt_input_conv``
      for one channel; for more than 3 timm tiles R, G, B instead of the mean).
    - ``copy_random``: the RGB filters on the first 3 channels, the others freshly
      initialised (Kaiming normal, ``fan_out``, as torchvision); for ``in_chans < 3``
      the first ``in_chans`` RGB filters.

    Out channels, kernel, stride, padding and bias are kept; with ``in_chans`` equal to
    the current input count ``conv`` itself is returned.
    """
    if mode not in ADAPT_MODES:
        raise ModelConfigError(f"adapt={mode!r} is not one of {', '.join(ADAPT_MODES)}")
    if conv.groups != 1:
        raise ModelConfigError("cannot adapt a grouped first convolution")
    if in_chans < 1:
        raise ModelConfigError(f"in_chans={in_chans} must be >= 1")
    weight = conv.weight.detach()
    src = weight.shape[1]
    if in_chans == src:
        return conv
    out, _, kh, kw = weight.shape
    if mode in ("mean", "mean_scaled"):
        new = weight.mean(dim=1, keepdim=True).expand(out, in_chans, kh, kw).clone()
        if mode == "mean_scaled":
            new *= src / in_chans
    elif in_chans < src:
        new = weight[:, :in_chans].clone()
    else:
        new = torch.empty(out, in_chans, kh, kw, dtype=weight.dtype, device=weight.device)
        nn.init.kaiming_normal_(new, mode="fan_out", nonlinearity="relu")
        new[:, :src] = weight
    return _with_weight(conv, new)


def fresh_first_conv(conv: nn.Conv2d, in_chans: int) -> nn.Conv2d:
    """A copy of ``conv`` with ``in_chans`` inputs, newly initialised (Kaiming normal, ``fan_out``).

    With ``in_chans`` equal to the current input count ``conv`` itself is returned.
    """
    if in_chans == conv.in_channels:
        return conv
    w = conv.weight
    new = torch.empty(w.shape[0], in_chans, *w.shape[2:], dtype=w.dtype, device=w.device)
    nn.init.kaiming_normal_(new, mode="fan_out", nonlinearity="relu")
    out = _with_weight(conv, new)
    if out.bias is not None:
        nn.init.zeros_(out.bias)
    return out


def first_conv_name(module: nn.Module) -> str:
    """Dotted name of the first ``nn.Conv2d`` registered in ``module`` (its input layer).

    ``conv1`` for torchvision's ResNets, ``features.0.0`` for MobileNetV2 and
    EfficientNet, ``conv_stem`` for timm's EfficientNets.
    """
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Conv2d):
            return name
    raise ModelConfigError(f"{type(module).__name__} has no Conv2d layer")


def replace_first_conv(
    module: nn.Module, in_chans: int, pretrained: bool, mode: str = "mean", name: str | None = None
) -> str:
    """Swap ``module``'s first conv for one with ``in_chans`` inputs; returns its dotted name.

    Pretrained: :func:`adapt_first_conv` (RGB filters reused); otherwise
    :func:`fresh_first_conv`.
    """
    name = name or first_conv_name(module)
    conv = module.get_submodule(name)
    if not isinstance(conv, nn.Conv2d):
        raise ModelConfigError(f"{name} is a {type(conv).__name__}, not a Conv2d")
    new = adapt_first_conv(conv, in_chans, mode) if pretrained else fresh_first_conv(conv, in_chans)
    module.set_submodule(name, new)
    return name
