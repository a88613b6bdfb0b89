"""The one LightningModule: it receives its network, loss and optimizer settings.

    >>> from birdstack.models import create_model
    >>> net = create_model("mobilenet_compact", num_classes=3, in_chans=10)
    >>> optim = OptimConfig(scheduler="warmup_cosine", warmup_epochs=1, label_smoothing=0.1)
    >>> module = BirdClassifier(net, optim, class_names=["a", "b", "c"])
    >>> module.hparams_for_checkpoint()["classes"]
    ['a', 'b', 'c']

Metrics are torchmetrics objects logged as ``train/loss``, ``train/acc``,
``val/loss``, ``val/acc``, ``val/f1_macro`` and the recording-level ``val/rec_acc`` and
``val/rec_f1_macro`` (window probabilities pooled per recording for ``segments``;
the location filter applied when it is on). Every checkpoint Lightning writes also
carries a ``birdstack`` block (model spec, classes, preprocessing, config) so it can
predict on its own.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from birdstack.config import AugmentConfig, ConfigError, DistillConfig, OptimConfig, TaskConfig
from birdstack.utils import BirdstackError

OPTIMIZERS = ("adam", "adamw", "rmsprop", "adagrad", "sgd")


def build_optimizer(params: Any, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Optimizer by name with the study's settings (momentum 0.9 for rmsprop and sgd).

    >>> opt = build_optimizer(nn.Linear(2, 2).parameters(), OptimConfig(name="sgd", lr=0.01))
    >>> type(opt).__name__, opt.defaults["momentum"]
    ('SGD', 0.9)
    """
    name = cfg.name.lower()
    wd = cfg.weight_decay
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=wd)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=cfg.lr, weight_decay=wd)
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=wd)
    raise ConfigError(f"unknown optimizer {cfg.name!r}; choose one of {', '.join(OPTIMIZERS)}")


def multilabel_loss(logits: torch.Tensor, targets: torch.Tensor, task: TaskConfig) -> torch.Tensor:
    """Binary cross-entropy (``task.loss=bce``) or sigmoid focal loss (``focal``) per output.

    Focal loss is torchvision's ``sigmoid_focal_loss`` (no alpha weighting), averaged
    over outputs like BCE, so the two share a scale.
    """
    if task.loss == "focal":
        from torchvision.ops import sigmoid_focal_loss

        return sigmoid_focal_loss(
            logits, targets, alpha=-1, gamma=task.focal_gamma, reduction="mean"
        )
    return F.binary_cross_entropy_with_logits(logits, targets)


# the probability a multi-label output starts at (RetinaNet's prior initialisation): with
# the bias at 0 every species starts at 0.5, and many epochs go to pulling them down
MULTILABEL_PRIOR = 0.01


def init_prior_bias(net: nn.Module, prior: float) -> None:
    """Set a trainable classifier's bias to ``logit(prior)`` (multi-label training start)."""
    get = getattr(net, "get_classifier", None)
    head = get() if callable(get) else None
    bias = getattr(head, "bias", None)
    if isinstance(bias, torch.Tensor) and bias.requires_grad:
        with torch.no_grad():
            bias.fill_(float(np.log(prior / (1 - prior))))


class BirdClassifier(L.LightningModule):
    """The classifier: single-label (softmax, cross-entropy; ``optim.label_smoothing``) or
    multi-label (sigmoid, BCE / focal) by ``task.kind``; ``augment.mixup_alpha > 0``
    trains on mixed batches and soft targets (both tasks). Validation loss is plain
    cross-entropy (BCE) on unmixed inputs.

    Multi-label validation logs ``val/cmap``, ``val/auroc`` (windows) and
    ``val/rec_cmap``, ``val/rec_auroc``, ``val/rec_top1``, ``val/rec_f1_rowwise``
    (recordings: window scores pooled by ``pool``, targets by max) and, when the fold
    holds negative clips (``data.negatives``, marked by :attr:`val_negative`),
    ``val/rec_open_set``: the share of them with some species above threshold;
    ``val/rec_f1_rowwise_all``: row-wise F1 (nocall) over every validation recording,
    negatives included, the figure that chooses a detector's best epoch.
    Per-class thresholds are chosen on the validation recordings' maximum window scores
    or on the windows (``task.threshold_on``), with or without such negatives
    (``task.threshold_negatives``; with them the open-set figure is measured on the
    clips that chose the thresholds), at the highest F-beta (``task.threshold_beta``;
    see :func:`~birdstack.evaluation.metrics.tune_thresholds`)
    at every validation and saved in the checkpoint.
    """

    def __init__(
        self,
        net: nn.Module,
        optim: OptimConfig,
        class_names: list[str],
        meta: dict[str, Any] | None = None,
        seed: int = 0,
        pool: str = "mean",
        distill: DistillConfig | None = None,
        task: TaskConfig | None = None,
        augment: AugmentConfig | None = None,
        embedding_dim: int | None = None,
    ) -> None:
        """``embedding_dim``: with ``distill.embedding > 0``, the size of the teacher's
        embedding that a training-only ``Linear`` of the student's features matches."""
        super().__init__()
        open_keys = [
            k
            for k, v in (
                ("optim.scheduler", None if optim.scheduler == "auto" else optim.scheduler),
                ("optim.label_smoothing", optim.label_smoothing),
                ("augment.mixup_alpha", augment.mixup_alpha if augment is not None else 0.0),
            )
            if v is None
        ]
        if open_keys:  # train() resolves them for the run's front end first
            raise ConfigError(
                f"{', '.join(open_keys)} left to the front end's default: pass the config "
                "through birdstack.config.resolve_training (train() does) before building "
                "the module"
            )
        self.net = net
        # mixup of training batches (augment.mixup_alpha > 0; item augmentations are the data's)
        self.mixup_alpha = augment.mixup_alpha if augment is not None else 0.0
        self.pool = pool
        self.task = task if task is not None else TaskConfig()
        self.multilabel = self.task.multilabel
        # multi-label: per validation recording, whether it is a negative clip (data.negatives)
        self.val_negative: torch.Tensor | None = None
        self.thresholds: list[float] = [self.task.threshold] * len(class_names)
        if self.multilabel:
            init_prior_bias(net, MULTILABEL_PRIOR)
        # with a teacher, training batches carry its scores: (x, y, rec, teacher_probs)
        self.distill = distill if distill is not None and distill.teacher else None
        # distill.embedding: batches also carry the teacher's embedding, matched by a
        # projection of the student's pooled features (not part of self.net: predict,
        # export and build_model_from_checkpoint never see it)
        self.embed_proj: nn.Linear | None = None
        if self.distill is not None and self.distill.embedding > 0:
            if embedding_dim is None or not hasattr(net, "forward_features"):
                raise ConfigError(
                    "distill.embedding needs the teacher's embedding_dim and a student with "
                    "forward_features / num_features (every registered model has them)"
                )
            self.embed_proj = nn.Linear(int(net.num_features), embedding_dim)
        # per validation recording and class: the location filter's factors (None: off)
        self.val_factors: torch.Tensor | None = None
        self.optim_cfg = optim
        self.class_names = list(class_names)
        self.meta = dict(meta or {})
        self.seed = seed
        k = len(class_names)
        metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes=k, average="micro"),
                "f1_macro": MulticlassF1Score(num_classes=k, average="macro"),
            }
        )
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.val_rec_metrics = metrics.clone(prefix="val/rec_")
        self._val_probs: list[torch.Tensor] = []
        self._val_recs: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []
        # one row of figures per finished epoch; saved in every checkpoint, so the history
        # of a resumed run is whole even when the job was killed right after a checkpoint
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ steps
    def on_fit_start(self) -> None:
        # Convolutions on image-like inputs run in channels-last (NHWC) layout: the same
        # arithmetic, about 1.35x faster for mobilenet_compact's depthwise convolutions
        # on CPU and the layout GPU tensor cores want. Checkpoints are unaffected
        # (values, not strides, are what load_state_dict copies).
        self.net.to(memory_format=torch.channels_last)

    @staticmethod
    def _layout(x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self._layout(x))

    def on_train_epoch_start(self) -> None:
        # Randomness inside an epoch (dropout, augmentation) depends only on seed and epoch,
        # so a run resumed from its last checkpoint continues exactly as the uninterrupted one.
        torch.manual_seed(self.seed * 1_000_003 + self.current_epoch * 101 + self.global_rank)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        if self.multilabel:
            targets = y.to(torch.float32)
            k = targets.shape[1]
            targets = self._with_teacher(targets, batch)
            if self.mixup_alpha > 0:  # multi-hot targets mixed with the inputs
                from birdstack.data.augment import mixup, mixup_draw

                lam, perm = mixup_draw(
                    self.mixup_alpha,
                    len(y),
                    self.seed,
                    self.current_epoch,
                    batch_idx,
                    self.global_rank,
                )
                x, targets = mixup(x, targets, lam, perm.to(x.device))
            if not self._distilled(batch):
                logits = self(x)
                loss = multilabel_loss(logits, targets.to(logits.dtype), self.task)
            else:
                from birdstack.training.distill import multilabel_distillation_loss

                logits, emb_loss = self._student(x, targets[:, 2 * k :] if len(batch) > 4 else None)
                labels = targets[:, :k].to(logits.dtype)
                d = self.distill
                assert d is not None
                loss = (
                    multilabel_distillation_loss(
                        logits,
                        labels,
                        targets[:, k : 2 * k],
                        d.alpha,
                        d.temperature,
                        multilabel_loss(logits, labels, self.task),
                    )
                    + emb_loss
                )
            self._log_epoch("train/loss", loss, len(y), prog_bar=True)
            return loss
        smoothing = self.optim_cfg.label_smoothing
        if self.mixup_alpha > 0:
            logits, loss = self._mixup_step(batch, batch_idx)
        elif self._distilled(batch):
            from birdstack.training.distill import distillation_loss

            logits, emb_loss = self._student(x, batch[4] if len(batch) > 4 else None)
            d = self.distill
            loss = distillation_loss(logits, y, batch[3], d.alpha, d.temperature, smoothing)
            loss = loss + emb_loss
        else:
            logits = self(x)
            loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
        labelled = y >= 0  # unlabelled audio (distillation) has no label to score
        if labelled.any():
            self.train_metrics.update(logits[labelled], y[labelled])
        self._log_epoch("train/loss", loss, len(y), prog_bar=True)
        return loss

    def _log_epoch(self, name: str, value: torch.Tensor, n: int, prog_bar: bool = False) -> None:
        """``name``'s epoch mean (each batch weighted by its ``n`` items), averaged over the
        DDP processes too."""
        self.log(
            name,
            value,
            on_step=False,
            on_epoch=True,
            prog_bar=prog_bar,
            batch_size=n,
            sync_dist=True,
        )

    def _mixup_step(self, batch: Any, batch_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and loss of a mixup batch: inputs, one-hot targets (and a teacher's scores)
        mixed with one ``lam ~ Beta(alpha, alpha)`` and pairing, drawn from (seed, epoch,
        batch) (:func:`birdstack.data.augment.mixup_draw`)."""
        from birdstack.data.augment import mixup, mixup_draw, one_hot_targets, soft_cross_entropy

        x, y = batch[0], batch[1]
        lam, perm = mixup_draw(
            self.mixup_alpha, len(y), self.seed, self.current_epoch, batch_idx, self.global_rank
        )
        perm = perm.to(x.device)
        k = len(self.class_names)
        targets = self._with_teacher(one_hot_targets(y, k), batch)
        x, targets = mixup(x, targets, lam, perm)
        smoothing = self.optim_cfg.label_smoothing
        if not self._distilled(batch):
            logits = self(x)
            return logits, soft_cross_entropy(logits, targets, smoothing)
        from birdstack.training.distill import distillation_loss

        logits, emb_loss = self._student(x, targets[:, 2 * k :] if len(batch) > 4 else None)
        d = self.distill
        assert d is not None
        loss = distillation_loss(
            logits, targets[:, :k], targets[:, k : 2 * k], d.alpha, d.temperature, smoothing
        )
        return logits, loss + emb_loss

    def _distilled(self, batch: Any) -> bool:
        """Whether ``batch`` carries a teacher's scores (``batch[3]``; its embeddings in
        ``batch[4]`` with ``distill.embedding``)."""
        return self.distill is not None and len(batch) >= 4

    def _with_teacher(self, targets: torch.Tensor, batch: Any) -> torch.Tensor:
        """``targets [B, K]`` with the teacher's scores ``[B, K]`` (and its embeddings,
        ``distill.embedding``) appended as columns, so that mixup mixes them all with one
        pairing; unchanged without a teacher."""
        if not self._distilled(batch):
            return targets
        return torch.cat([targets, *(t.to(targets) for t in batch[3:5])], dim=1)

    def _student(
        self, x: torch.Tensor, embedding: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits, and ``distill.embedding`` x the embedding term (0 without embeddings)."""
        if embedding is None or self.embed_proj is None:
            logits = self(x)
            return logits, logits.new_zeros(())
        from birdstack.training.distill import embedding_loss

        feats = self.net.forward_features(self._layout(x))
        logits = self.net.forward_head(feats)
        assert self.distill is not None
        term = self.distill.embedding * embedding_loss(self.embed_proj(feats), embedding)
        self._log_epoch("train/embed_loss", term, len(x))
        return logits, term

    def on_train_epoch_end(self) -> None:
        if not self.multilabel:
            self.log_dict(self.train_metrics.compute(), sync_dist=True)
            self.train_metrics.reset()
        self._record_epoch()

    def _record_epoch(self) -> None:
        """Append this epoch's ``train/*`` and ``val/*`` figures to :attr:`history`."""
        if self._trainer is None:
            return
        row: dict[str, float] = {"epoch": int(self.current_epoch)}
        for key, value in sorted(self.trainer.callback_metrics.items()):
            if key.startswith(("train/", "val/")):
                row[key] = float(value)
        self.history = [r for r in self.history if r["epoch"] != row["epoch"]] + [row]

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y, rec = batch
        logits = self(x)
        if self.multilabel:
            loss = multilabel_loss(logits, y.to(logits.dtype), self.task)
            probs = logits.sigmoid()
        else:
            loss = F.cross_entropy(logits, y)
            self.val_metrics.update(logits, y)
            probs = logits.softmax(-1)
        self._log_epoch("val/loss", loss, len(y), prog_bar=True)
        self._val_probs.append(probs.detach())
        self._val_recs.append(rec.detach())
        self._val_labels.append(y.detach())

    def on_validation_epoch_end(self) -> None:
        if self.multilabel:
            if self._val_probs:
                self._multilabel_epoch_end()
            self._val_probs.clear()
            self._val_recs.clear()
            self._val_labels.clear()
            return
        self.log_dict(self.val_metrics.compute(), prog_bar=True, sync_dist=True)
        self.val_metrics.reset()
        if self._val_probs:
            probs = torch.cat(self._val_probs)
            recs = torch.cat(self._val_recs)
            labels = torch.cat(self._val_labels)
            pooled, pooled_labels = pool_by_recording(probs, recs, labels, self.pool)
            if self.val_factors is not None:
                ids = torch.unique(recs).to(self.val_factors.device)
                pooled = pooled * self.val_factors[ids].to(pooled)
            self.val_rec_metrics.update(pooled, pooled_labels)
            self.log_dict(self.val_rec_metrics.compute(), sync_dist=True)
            self.val_rec_metrics.reset()
        self._val_probs.clear()
        self._val_recs.clear()
        self._val_labels.clear()

    def _multilabel_epoch_end(self) -> None:
        """Window and recording figures, thresholds (see the class docstring)."""
        from birdstack.evaluation.metrics import multilabel_metrics, rowwise_f1, tune_thresholds

        probs = torch.cat(self._val_probs).float().cpu()
        recs = torch.cat(self._val_recs).cpu()
        labels = torch.cat(self._val_labels).float().cpu()
        if self.val_factors is not None:
            probs = probs * self.val_factors[recs].to(probs)
        neg = (
            self.val_negative.cpu()[recs]
            if self.val_negative is not None
            else torch.zeros(len(recs), dtype=torch.bool)
        )
        y, p = labels.numpy(), probs.numpy()
        keep = ~neg.numpy()
        pooled, pooled_labels = pool_by_recording(probs, recs, labels, self.pool)
        rec_neg = (
            self.val_negative.cpu()[torch.unique(recs)].numpy()
            if self.val_negative is not None
            else np.zeros(len(pooled), dtype=bool)
        )
        yr, pr = pooled_labels.numpy(), pooled.numpy()
        if self.task.threshold_on == "recordings":
            ty, tp, tkeep = yr, pr, ~rec_neg
        else:
            ty, tp, tkeep = y, p, keep
        if self.task.threshold_negatives:
            tkeep = np.ones(len(ty), dtype=bool)
        if self.task.tune_thresholds and (tkeep & (ty > 0).any(axis=1)).any():
            self.thresholds = [
                float(t)
                for t in tune_thresholds(
                    ty[tkeep], tp[tkeep], self.task.threshold, self.task.threshold_beta
                )
            ]
        thr = np.asarray(self.thresholds)
        out: dict[str, float] = {}
        if keep.any():
            win = multilabel_metrics(y[keep], p[keep], self.class_names, thr)
            out.update({"val/cmap": win.cmap, "val/auroc": win.auroc})
        if (~rec_neg).any():
            m = multilabel_metrics(yr[~rec_neg], pr[~rec_neg], self.class_names, thr)
            out.update(
                {
                    "val/rec_cmap": m.cmap,
                    "val/rec_auroc": m.auroc,
                    "val/rec_top1": m.top1,
                    "val/rec_f1_rowwise": m.f1_rowwise_nocall,
                }
            )
        if rec_neg.any():
            out["val/rec_open_set"] = float((pr[rec_neg] >= thr[None, :]).any(axis=1).mean())
        # what predict's thresholded output earns per file, abstentions included: row-wise
        # F1 with nocall over every validation recording, negatives too (a negative with no
        # detection scores 1); it chooses a detector's best epoch
        out["val/rec_f1_rowwise_all"] = float(rowwise_f1(yr, pr >= thr[None, :], True).mean())
        out = {k: (v if v == v else 0.0) for k, v in out.items()}  # NaN: nothing to rank
        self.log_dict(out, prog_bar=False, sync_dist=True)

    # ------------------------------------------------------------------ optim
    def configure_optimizers(self) -> Any:
        opt = build_optimizer([p for p in self.parameters() if p.requires_grad], self.optim_cfg)
        if self.optim_cfg.scheduler == "warmup_cosine":
            epochs = self.trainer.max_epochs if self.trainer is not None else 1
            total = int(self.trainer.estimated_stepping_batches) if self.trainer is not None else 1
            warmup = int(round(self.optim_cfg.warmup_epochs * total / max(1, epochs or 1)))
            sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(warmup, total))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        if self.optim_cfg.scheduler == "cosine":
            epochs = self.trainer.max_epochs if self.trainer is not None else 1
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        return opt

    # ------------------------------------------------------------------ checkpoint
    def hparams_for_checkpoint(self) -> dict[str, Any]:
        """The ``birdstack`` block stored in every checkpoint (plain values only)."""
        block = {"format": CHECKPOINT_FORMAT, "classes": list(self.class_names), **self.meta}
        if self.multilabel:
            block["task"] = "multilabel"
            block["thresholds"] = [float(t) for t in self.thresholds]
        return block

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["birdstack"] = self.hparams_for_checkpoint()
        checkpoint["birdstack_history"] = [dict(r) for r in self.history]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("birdstack", {}).get("classes")
        if saved is not None and list(saved) != self.class_names:
            raise BirdstackError(
                f"the checkpoint was trained on classes {saved}, but this run has "
                f"{self.class_names}; use the same data selection or start a new run folder"
            )
        self.history = [dict(r) for r in checkpoint.get("birdstack_history", [])]
        thresholds = checkpoint.get("birdstack", {}).get("thresholds")
        if thresholds is not None and len(thresholds) == len(self.class_names):
            self.thresholds = [float(t) for t in thresholds]


CHECKPOINT_FORMAT = "birdstack-checkpoint/1"


class WarmupCosine:
    """Learning-rate factor of optimizer step ``s``: linear warm-up, then cosine to 0.

    An object, not a closure, so ``LambdaLR`` saves it in checkpoints (plain values).

    ``(s + 1) / warmup`` for the first ``warmup`` steps, then
    ``0.5 * (1 + cos(pi * (s - warmup) / (total - warmup)))``.

    >>> f = WarmupCosine(2, 6)
    >>> [round(f(s), 3) for s in range(6)]
    [0.5, 1.0, 1.0, 0.854, 0.5, 0.146]
    """

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total = max(0, int(warmup)), max(1, int(total))

    def __call__(self, step: int) -> float:
        import math

        if step < self.warmup:
            return (step + 1) / self.warmup
        span = max(1, self.total - self.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - self.warmup) / span)))


def pool_by_recording(
    probs: torch.Tensor, recs: torch.Tensor, labels: torch.Tensor, mode: str = "mean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Window probabilities pooled per recording id (ordered by id), and each one's label.

    ``mode``: ``mean`` of the windows, or ``max`` per class (``encoding.pool``).

    >>> p = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]])
    >>> pool_by_recording(p, torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1]))[0]
    tensor([[0.7000, 0.3000],
            [0.2000, 0.8000]])
    >>> pool_by_recording(p, torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1]), "max")[0]
    tensor([[0.9000, 0.5000],
            [0.2000, 0.8000]])
    """
    uniq, inv = torch.unique(recs, return_inverse=True)
    if labels.ndim == 2:  # multi-label targets: a recording has every species of its windows
        rec_labels = torch.zeros(len(uniq), labels.shape[1], dtype=labels.dtype)
        rec_labels = rec_labels.to(labels.device).scatter_reduce(
            0, inv.unsqueeze(1).expand_as(labels), labels, reduce="amax"
        )
    else:
        rec_labels = torch.zeros(len(uniq), dtype=labels.dtype, device=labels.device)
        rec_labels[inv] = labels
    if mode == "max":
        out = torch.full((len(uniq), probs.shape[1]), -torch.inf, dtype=probs.dtype)
        out = out.to(probs.device).scatter_reduce(
            0, inv.unsqueeze(1).expand_as(probs), probs, reduce="amax"
        )
        return out, rec_labels
    sums = torch.zeros(len(uniq), probs.shape[1], dtype=probs.dtype, device=probs.device)
    sums.index_add_(0, inv, probs)
    counts = torch.bincount(inv, minlength=len(uniq)).to(probs.dtype).unsqueeze(1)
    return sums / counts, rec_labels
