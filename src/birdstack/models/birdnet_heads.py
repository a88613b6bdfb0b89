"""Heads on BirdNET V2.4 windows (``preprocessing.frontend="birdnet"``).

Each model input is one 3 s window's BirdNET output, ``[embedding 1024 | logits
6522]`` (:mod:`birdstack.features.birdnet`), so these are ordinary
:class:`~birdstack.models.registry.BirdstackNet` s on ``[B, 7546]`` inputs:

* ``birdnet_linear``: standardised embedding -> ``Linear`` (a logistic regression);
* ``birdnet_mlp``: standardised embedding -> ``Linear(1024, 512)`` -> GELU -> dropout
  -> ``Linear`` (dropout at least 0.2);
* ``birdnet_fused``: ``birdnet_linear`` plus, for each class BirdNET knows, BirdNET's
  own logit for it times a learned per-class weight (initialised to 1). Mapped
  classes start from BirdNET's training; unmapped ones are learned from the
  embedding, on top of BirdNET's evidence that any mapped species sings (so both
  kinds of class are on one scale, :class:`FusedNet`);
* ``birdnet_scores``: BirdNET's own logits for the mapped classes and nothing to
  train (unmapped classes get a logit of -30). It is the no-training reference row.

The embedding is standardised with the mean and variance of all training inputs
(:class:`Standardize`), the same in training and evaluation, as a logistic regression
on ``StandardScaler``-ed features would be.

    >>> net = create_model("birdnet_fused", num_classes=3, in_chans=FEATURE_DIM,
    ...                    class_map=[5, -1, 7])
    >>> net(torch.zeros(2, FEATURE_DIM)).shape
    torch.Size([2, 3])
"""

from __future__ import annotations

import torch
from torch import nn

from birdstack.features.birdnet import EMBED_DIM, FEATURE_DIM
from birdstack.models.registry import (
    BirdstackNet,
    ModelArgs,
    ModelConfigError,
    create_model,
    register_model,
)

UNMAPPED_LOGIT = -30.0
MLP_HIDDEN = 512

__all__ = ["MappedScores", "create_model"]


class Standardize(nn.Module):
    """Per-feature standardisation with the mean and variance of every training input seen.

    Unlike BatchNorm, training and evaluation normalise alike: in training mode each
    batch first updates the cumulative mean and variance (Chan et al.'s parallel
    update, no gradient), then every input is standardised with them. After one
    epoch they are the training set's own statistics, as a scikit-learn
    ``StandardScaler`` would fit them, and they are saved in the checkpoint.

    >>> s = Standardize(2); _ = s(torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
    >>> s.eval()(torch.tensor([[1.0, 2.0]]))
    tensor([[0., 0.]])
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(dim, dtype=torch.float64))

    @torch.no_grad()
    def _update(self, x: torch.Tensor) -> None:
        x = x.detach().to(torch.float64)
        n_b = float(x.shape[0])
        mean_b = x.mean(0)
        m2_b = ((x - mean_b) ** 2).sum(0)
        n = float(self.count)
        delta = mean_b - self.mean
        total = n + n_b
        self.mean += delta * (n_b / total)
        self.m2 += m2_b + delta**2 * (n * n_b / total)
        self.count += n_b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] > 0:
            self._update(x)
        var = self.m2 / torch.clamp(self.count - 1, min=1.0)
        scale = torch.rsqrt(var + self.eps).to(x.dtype)
        return (x - self.mean.to(x.dtype)) * scale


class Embedding(nn.Module):
    """``[B, 7546]`` BirdNET window -> its standardised 1024-d embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = Standardize(EMBED_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x[:, :EMBED_DIM])


class MappedScores(nn.Module):
    """BirdNET's logits for each class (``class_map[k]``; 0 where unmapped) and the mask."""

    def __init__(self, class_map: tuple[int, ...]) -> None:
        super().__init__()
        idx = torch.tensor([max(0, i) for i in class_map], dtype=torch.long) + EMBED_DIM
        self.register_buffer("index", idx, persistent=False)
        mask = torch.tensor([float(i >= 0) for i in class_map])
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.index) * self.mask


def _check_input(args: ModelArgs) -> None:
    if args.in_chans != FEATURE_DIM:
        raise ModelConfigError(
            f"model {args.name!r} reads BirdNET windows ({FEATURE_DIM} values each), not "
            f"in_chans={args.in_chans}; use preprocessing.frontend=birdnet"
        )


def _embedding_net(args: ModelArgs, hidden: int | None) -> BirdstackNet:
    _check_input(args)
    if hidden is None:
        backbone: nn.Module = Embedding()
        width = EMBED_DIM
    else:
        backbone = nn.Sequential(
            Embedding(),
            nn.Linear(EMBED_DIM, hidden),
            nn.GELU(),
            nn.Dropout(max(0.2, args.dropout)),
        )
        width = hidden
    return BirdstackNet(backbone, width, args.num_classes, args.in_chans, args.dropout)


@register_model(frontend="birdnet")
def birdnet_linear(args: ModelArgs) -> BirdstackNet:
    """Logistic regression on BirdNET's standardised 1024-d embedding."""
    return _embedding_net(args, None)


@register_model(frontend="birdnet")
def birdnet_mlp(args: ModelArgs) -> BirdstackNet:
    """One hidden layer (512, GELU, dropout) on BirdNET's standardised embedding."""
    return _embedding_net(args, MLP_HIDDEN)


class FusedNet(BirdstackNet):
    """A head on the embedding plus BirdNET's own logits for the classes it knows.

    A mapped class scores ``head_k + w_k * birdnet_k``. An unmapped class has no
    BirdNET logit of its own, and a fixed 0 in its place would not be on the same
    scale: where BirdNET hears the true (mapped) species only faintly, all mapped
    logits are negative (-4 to -8 on birds-dev's quieter recordings) and the
    unmapped class won by default. So an unmapped class scores
    ``head_k + v_k * logsumexp_j(birdnet_j)`` over the mapped classes: BirdNET's
    evidence that any of them sings, a baseline on the mapped classes' scale, with
    ``v_k`` learned (initialised to 1). The head then decides between them on equal
    terms. A checkpoint saved before ``evidence_weight`` existed loads with ``v = 0``
    (its own behaviour).
    """

    def __init__(self, base: BirdstackNet, class_map: tuple[int, ...]) -> None:
        super().__init__(
            base.backbone, base.num_features, base.num_classes, base.in_chans, base.dropout.p
        )
        self.scores = MappedScores(class_map)
        self.birdnet_weight = nn.Parameter(torch.ones(len(class_map)))
        mapped = [k for k, i in enumerate(class_map) if i >= 0]
        self.register_buffer("mapped", torch.tensor(mapped, dtype=torch.long), persistent=False)
        # only unmapped classes read the evidence (the mask keeps mapped ones at 0)
        self.evidence_weight = nn.Parameter(1.0 - self.scores.mask.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        own = self.forward_head(self.forward_features(x))
        scores = self.scores(x)
        out = own + self.birdnet_weight * scores
        if len(self.mapped):  # BirdNET's evidence that one of the mapped species sings
            evidence = torch.logsumexp(scores.index_select(1, self.mapped), dim=1, keepdim=True)
            out = out + self.evidence_weight * (1.0 - self.scores.mask) * evidence
        return out

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        key = prefix + "evidence_weight"
        if key not in state_dict and prefix + "birdnet_weight" in state_dict:
            state_dict[key] = torch.zeros_like(self.evidence_weight)  # saved before it existed
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@register_model(frontend="birdnet", needs_class_map=True)
def birdnet_fused(args: ModelArgs) -> BirdstackNet:
    """``birdnet_linear`` + learned weight x BirdNET's logit, for each mapped class."""
    assert args.class_map is not None
    return FusedNet(_embedding_net(args, None), args.class_map)


class ScoresNet(BirdstackNet):
    """BirdNET's own logits for the mapped classes; nothing to train."""

    def __init__(self, args: ModelArgs) -> None:
        assert args.class_map is not None
        k = args.num_classes
        super().__init__(MappedScores(args.class_map), k, k, args.in_chans)
        with torch.no_grad():
            self.classifier.weight.copy_(torch.eye(k))
            bias = [0.0 if i >= 0 else UNMAPPED_LOGIT for i in args.class_map]
            self.classifier.bias.copy_(torch.tensor(bias))
        self.requires_grad_(False)


@register_model(frontend="birdnet", needs_class_map=True, trainable=False)
def birdnet_scores(args: ModelArgs) -> BirdstackNet:
    """BirdNET V2.4's own scores for the classes it knows (the no-training reference)."""
    _check_input(args)
    return ScoresNet(args)
