"""Lightning callbacks that birdstack's ``train(config)`` adds on request.

>>> from birdstack.training.callbacks import EMAWeights, PreciseBatchNorm, progress_callback
>>> cb = PreciseBatchNorm()        # train(config) adds it when trainer.precise_bn is set
>>> ema = EMAWeights(0.998)        # this when trainer.ema_decay is set
>>> bar = progress_callback()      # and this when trainer.progress is set
"""

from __future__ import annotations

import sys
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar, WeightAveraging
from torch import nn
from torch.optim.swa_utils import update_bn

from birdstack.utils import format_duration, is_interactive


class PreciseBatchNorm(L.Callback):
    """Recompute BatchNorm running statistics with one pass over the training set.

    With few optimizer steps per epoch (4 for 72 recordings at batch 16) the
    running averages (momentum 0.1) lag far behind weights that change quickly,
    and an eval-mode network can predict one class for many epochs while its
    training accuracy rises. Before every validation this callback resets the
    statistics and averages them over the epoch's training inputs
    (:func:`torch.optim.swa_utils.update_bn`, no gradients), so validation
    figures, checkpoints and later predictions use statistics of the current
    weights (the "precise BN" of Wu & Johnson, 2021). Training itself is
    unchanged: train-mode BatchNorm normalises with batch statistics.

    The datamodule must offer ``stats_dataloader(epoch)``
    (:class:`~birdstack.data.datamodule.BirdDataModule` does).
    """

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        net: nn.Module = getattr(pl_module, "net", pl_module)
        datamodule: Any = trainer.datamodule
        loader = datamodule.stats_dataloader(epoch=trainer.current_epoch)
        # a network without BatchNorm returns before the first batch; train/eval mode is restored
        update_bn(loader, net, device=pl_module.device)


class EMAWeights(WeightAveraging):
    """An exponential moving average of the weights, validated, saved and deployed.

    Lightning's :class:`~lightning.pytorch.callbacks.WeightAveraging` keeps an
    :class:`~torch.optim.swa_utils.AveragedModel` updated after every optimizer step,
    swaps it in for validation (so the recording-level figures, ``best.ckpt``'s choice
    and early stopping see the average) and writes it as the checkpoint's
    ``state_dict``, the weights ``evaluate``, ``predict`` and ``export`` load; the
    training weights travel beside it (``current_model_state``), so ``--resume`` goes
    on exactly. The decay warms up as in timm's ``ModelEmaV3``:
    ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so a short run (or the
    first epochs) averages recent weights rather than its random start. BatchNorm
    statistics are averaged too; with :class:`PreciseBatchNorm` (placed after this
    callback) they are recomputed for the averaged weights before every validation.
    """

    def __init__(self, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay {decay} must be in (0, 1)")
        self.decay = decay
        super().__init__(multi_avg_fn=self._ema)

    def _ema(
        self,
        averaged: list[torch.Tensor],
        current: list[torch.Tensor],
        num_averaged: torch.Tensor,
    ) -> None:
        """One update of a group of tensors (one device and dtype), in place."""
        if not averaged[0].is_floating_point():  # BatchNorm's num_batches_tracked
            torch._foreach_copy_(averaged, current)
            return
        n = float(num_averaged)  # one host read per group, not per tensor
        d = min(self.decay, (1.0 + n) / (10.0 + n))
        torch._foreach_lerp_(averaged, current, 1.0 - d)


class EpochLines(ProgressBar):
    """Lightning's progress bar for logs: one plain line per finished epoch.

    Used instead of the TQDM bar when stderr is not a terminal (SLURM jobs, CI,
    ``nohup``, ``make demo > log``), where a redrawn bar leaves carriage-return
    fragments. The line has the epoch, the epoch's figures known when it ends
    (training and validation) and its wall time::

        epoch 3/20: train/acc 0.6250  train/f1_macro 0.6103  train/loss 1.1978  val/acc 0.4167
        val/f1_macro 0.3810  val/loss 1.5012  ...  (4 s)              (one line, wrapped here)

    Being a :class:`~lightning.pytorch.callbacks.ProgressBar`, it replaces Lightning's
    default bar; only the global-zero process writes.
    """

    def __init__(self, stream: Any = None) -> None:
        super().__init__()
        self.stream = stream
        self.enabled = True
        self._t0 = time.monotonic()
        self._pending: tuple[int, float] | None = None  # (epoch, seconds) not yet written

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    # The figures the LightningModule logs in its own on_train_epoch_end (train/acc, ...)
    # arrive after the callbacks' hook, so an epoch's line is written when the next epoch
    # starts or training ends, with the time measured at the epoch's end.
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer)
        self._t0 = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pending = (trainer.current_epoch, time.monotonic() - self._t0)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer)

    def _write(self, trainer: L.Trainer) -> None:
        pending, self._pending = self._pending, None
        if pending is None or not self.enabled or not trainer.is_global_zero:
            return
        epoch, seconds = pending
        figures = []
        for key, value in sorted(trainer.callback_metrics.items()):
            try:
                figures.append(f"{key} {float(value):.4f}")
            except (TypeError, ValueError, RuntimeError):  # not a scalar
                continue
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        line = f"epoch {epoch + 1}{total}: " + "  ".join(figures)
        self.print(f"{line}  ({format_duration(seconds)})")

    def print(self, *args: Any, **kwargs: Any) -> None:
        stream = sys.stderr if self.stream is None else self.stream
        print(*args, file=stream, flush=True, **kwargs)


def progress_callback(stream: Any = None) -> ProgressBar:
    """Lightning's TQDM bar on a terminal; :class:`EpochLines` anywhere else (logs)."""
    if is_interactive(stream):
        return TQDMProgressBar(leave=False)
    return EpochLines(stream)
