"""Lightning callbacks that birdstack's ``train(config)`` adds on request.

>>> from birdstack.training.callbacks import PreciseBatchNorm
>>> cb = PreciseBatchNorm()        # train(config) adds it when trainer.precise_bn is set
"""

from __future__ import annotations

from typing import Any

import lightning as L
from torch import nn
from torch.optim.swa_utils import update_bn


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
