"""Model registry (timm style) and the interface every birdstack network shares.

A builder is registered under a name and turns :class:`ModelArgs` into a
:class:`BirdstackNet`; :func:`create_model` validates the arguments, calls the builder
and records the arguments on the model so that a checkpoint can rebuild it::

    >>> model = create_model("mobilenet_compact", num_classes=6, in_chans=10)
    >>> model(torch.zeros(2, 10, 128, 96)).shape
    torch.Size([2, 6])
    >>> create_model(**model.model_args).num_features
    64
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import torch
from torch import nn

from birdstack.config import ConfigError, ModelConfig
from birdstack.utils import BadInputError, BirdstackError

ADAPT_MODES = ("mean", "mean_scaled", "copy_random")


class ModelConfigError(BirdstackError, ConfigError):
    """A model setting is unknown or impossible (name, adapt mode, pretrained weights, sizes)."""


@dataclass(frozen=True)
class ModelArgs:
    """The validated arguments of :func:`create_model`, handed to a builder.

    ``pretrained`` is true whenever ``weights`` (a local state_dict file) is given.
    """

    name: str
    num_classes: int
    in_chans: int
    pretrained: bool = False
    weights: str | None = None
    adapt: str = "mean"
    dropout: float = 0.0
    class_map: tuple[int, ...] | None = None

    def rebuild_args(self) -> dict[str, Any]:
        """Arguments that rebuild the architecture (not pretrained: a checkpoint has weights)."""
        d = dataclasses.asdict(dataclasses.replace(self, pretrained=False, weights=None))
        if d["class_map"] is None:
            d.pop("class_map")
        else:
            d["class_map"] = list(d["class_map"])
        return d


class BirdstackNet(nn.Module):
    """``backbone`` (image -> pooled embedding ``[B, D]``) + dropout + ``Linear(D, K)`` head.

    Attributes: ``num_features`` (D), ``num_classes`` (K), ``in_chans``, ``first_conv``
    (dotted name of the input convolution), ``model_args`` (the :func:`create_model`
    keyword arguments that rebuild this architecture) and ``pretrained_from`` (where
    the pretrained weights came from, or ``None``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_features: int,
        num_classes: int,
        in_chans: int,
        dropout: float = 0.0,
        first_conv: str = "",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_features = num_features
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.first_conv = first_conv
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(num_features, num_classes)
        self.model_args: dict[str, Any] = {}
        self.pretrained_from: str | None = None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> pooled embedding ``[B, num_features]``."""
        return self.backbone(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled embedding ``[B, num_features]`` -> logits ``[B, num_classes]``."""
        return self.classifier(self.dropout(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> logits ``[B, num_classes]``."""
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        """The final ``Linear`` layer."""
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a freshly initialised ``Linear(num_features, num_classes)``."""
        if num_classes < 1:
            raise ModelConfigError(f"num_classes={num_classes} must be >= 1")
        old = self.classifier.weight
        self.classifier = nn.Linear(self.num_features, num_classes).to(old.device, old.dtype)
        self.num_classes = num_classes
        if self.model_args:
            self.model_args = {**self.model_args, "num_classes": num_classes}

    def set_head(self, head: nn.Linear) -> None:
        """Use an existing ``Linear`` (e.g. a pretrained ImageNet head) as the classifier."""
        if head.in_features != self.num_features:
            raise ModelConfigError(
                f"head takes {head.in_features} features, the backbone gives {self.num_features}"
            )
        self.classifier = head
        self.num_classes = head.out_features


Builder = Callable[[ModelArgs], BirdstackNet]


def wrap_backbone(
    net: nn.Module, linear: nn.Linear, args: ModelArgs, first: str, source: str | None
) -> BirdstackNet:
    """A :class:`BirdstackNet` around a headless backbone; ``linear`` is the backbone's old head,
    kept when it was loaded pretrained and ``num_classes`` equals its size."""
    model = BirdstackNet(
        net,
        linear.in_features,
        args.num_classes,
        args.in_chans,
        args.dropout,
        first_conv=f"backbone.{first}",
    )
    if args.pretrained and args.num_classes == linear.out_features:
        model.set_head(linear)
    model.pretrained_from = source
    return model


FRONTENDS = ("logmel", "birdnet")


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its builder, whether pretrained weights exist for it, which
    feature front end it reads (``logmel`` spectrograms or ``birdnet`` windows), whether
    it needs each class's BirdNET label index (``class_map``) and whether it has
    anything to train."""

    name: str
    builder: Builder
    pretrained: bool
    frontend: str = "logmel"
    needs_class_map: bool = False
    trainable: bool = True


_REGISTRY: dict[str, ModelEntry] = {}


@overload
def register_model(fn: Builder, /) -> Builder: ...
@overload
def register_model(
    fn: None = None,
    /,
    *,
    name: str | None = None,
    pretrained: bool = False,
    frontend: str = "logmel",
    needs_class_map: bool = False,
    trainable: bool = True,
) -> Callable[[Builder], Builder]: ...
def register_model(
    fn: Builder | None = None,
    /,
    *,
    name: str | None = None,
    pretrained: bool = False,
    frontend: str = "logmel",
    needs_class_map: bool = False,
    trainable: bool = True,
) -> Builder | Callable[[Builder], Builder]:
    """Register a builder under its function name (or ``name``).

    Use bare (``@register_model``) or with options (``@register_model(pretrained=True)``).
    ``pretrained`` says whether the builder can load pretrained weights; ``frontend``
    which features it reads; ``needs_class_map`` whether it needs the classes' BirdNET
    label indices; ``trainable`` whether it has parameters to train.
    """
    if frontend not in FRONTENDS:
        raise ValueError(f"frontend={frontend!r} is not one of {FRONTENDS}")

    def deco(f: Builder) -> Builder:
        key = name or f.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is registered twice")
        _REGISTRY[key] = ModelEntry(key, f, pretrained, frontend, needs_class_map, trainable)
        return f

    return deco(fn) if fn is not None else deco


def list_models(pretrained: bool = False, frontend: str | None = None) -> list[str]:
    """Sorted names of the registered models (``pretrained=True``: only those with weights;
    ``frontend``: only those reading ``logmel`` spectrograms or ``birdnet`` windows)."""
    return sorted(
        n
        for n, e in _REGISTRY.items()
        if (e.pretrained or not pretrained) and (frontend is None or e.frontend == frontend)
    )


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered model."""
    return name in _REGISTRY


def model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name`` (:class:`ModelConfigError` when unknown)."""
    if name not in _REGISTRY:
        raise ModelConfigError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(
    name: str,
    num_classes: int = 1000,
    in_chans: int = 3,
    pretrained: bool = False,
    weights: str | None = None,
    adapt: str = "mean",
    dropout: float = 0.0,
    class_map: Sequence[int] | None = None,
) -> BirdstackNet:
    """Build a registered model.

    ``pretrained``: load ImageNet weights (downloaded once into torch's hub cache), or
    from ``weights``, a local state_dict file of the underlying model (which implies
    ``pretrained``). The first convolution is then adapted to ``in_chans`` with
    ``adapt`` (see :func:`birdstack.models.adapt.adapt_first_conv`); the ImageNet head is
    kept when ``num_classes`` equals its size, otherwise a new head is made. Without
    pretrained weights the network is initialised from scratch for ``in_chans``.
    ``dropout`` is applied to the pooled embedding before the head. ``class_map``
    (models that read BirdNET's own scores): each class's index among BirdNET's
    labels, ``-1`` for a class BirdNET does not know.
    """
    entry = model_entry(name)
    for key, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelConfigError(f"{key}={value!r} must be an integer >= 1")
    if adapt not in ADAPT_MODES:
        raise ModelConfigError(f"adapt={adapt!r} is not one of {', '.join(ADAPT_MODES)}")
    if not 0.0 <= dropout < 1.0:
        raise ModelConfigError(f"dropout={dropout} must be in [0, 1)")
    pretrained = bool(pretrained or weights)
    if pretrained and not entry.pretrained:
        raise ModelConfigError(
            f"model {name!r} has no pretrained weights; set pretrained=false (and no weights) or "
            f"use one of: {', '.join(list_models(pretrained=True))}"
        )
    if entry.needs_class_map and (class_map is None or len(class_map) != num_classes):
        raise ModelConfigError(
            f"model {name!r} needs class_map: one BirdNET label index (or -1) per class"
        )
    if class_map is not None:
        class_map = tuple(int(i) for i in class_map)
    args = ModelArgs(
        name=name,
        num_classes=num_classes,
        in_chans=in_chans,
        pretrained=pretrained,
        weights=str(weights) if weights is not None else None,
        adapt=adapt,
        dropout=float(dropout),
        class_map=class_map,
    )
    model = entry.builder(args)
    model.model_args = {**args.rebuild_args(), "num_classes": model.num_classes}
    return model


def create_model_from_config(
    cfg: ModelConfig, num_classes: int, in_chans: int, class_map: Sequence[int] | None = None
) -> BirdstackNet:
    """:func:`create_model` from a :class:`~birdstack.config.ModelConfig`."""
    return create_model(
        cfg.name,
        num_classes=num_classes,
        in_chans=in_chans,
        pretrained=cfg.pretrained,
        weights=cfg.weights,
        adapt=cfg.adapt,
        dropout=cfg.dropout,
        class_map=class_map,
    )


# --------------------------------------------------------------------------- weight files


def describe(error: BaseException) -> str:
    """``Type: first line`` of an exception, at most 120 characters (torch's are long).

    torch's weights-only unpickling errors are reduced to their type: their text
    suggests ``weights_only=False``, which birdstack never does.
    """
    first = next(iter(str(error).strip().splitlines()), "")
    if not first or first.startswith("Weights only load failed"):
        return type(error).__name__
    text = f"{type(error).__name__}: {first}"
    return text if len(text) <= 120 else text[:117] + "..."


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.pth`` state_dict safely (``weights_only=True``, on CPU)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise BadInputError(p, "weights file not found")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise BadInputError(
            p, f"not a readable PyTorch weights file (torch.load(weights_only=True): {describe(e)})"
        ) from None
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BadInputError(p, "expected a state_dict (a mapping of parameter names to tensors)")
    return dict(obj)


def load_matching(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, what: str
) -> None:
    """Load ``state_dict`` strictly; a mismatch raises :class:`BadInputError` naming ``source``."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)):
            if items:
                more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
                parts.append(f"{label}: {', '.join(items[:3])}{more}")
        raise BadInputError(source, f"weights do not fit {what}: {'; '.join(parts)}")
    module.load_state_dict(state_dict)
