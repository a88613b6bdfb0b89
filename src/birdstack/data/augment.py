"""Training-only augmentations of log-mel inputs, and mixup of training batches.

Everything here is for **training items only** (like OpenSoundscape's training-only
preprocessing actions): :class:`birdstack.data.datamodule.BirdDataModule` hands a
:class:`TrainAugment` to its training dataset and never to the validation one;
``evaluate`` and ``predict`` never build one. The settings are
:class:`birdstack.config.AugmentConfig` (``Config.augment``), so a checkpoint's
config records them.

An item's draws come from :func:`item_rng` (``seed``, epoch, item index), the
scheme of the random training crops, so the same seed gives the same augmented
batch and a resumed run continues as the uninterrupted one would have.

One input is augmented in this order (:meth:`TrainAugment.encode`):

1. its dB spectrogram ``[n_mels, T]`` (a ``segments`` window, or the trimmed whole
   recording of ``stacked``) gets noise: :func:`mix_noise_db` in the power domain,
   before the per-input normalisation;
2. it is normalised as usual (max -> 1, ``-top_db`` -> 0) and padded to its length;
3. :func:`time_shift` and :func:`spec_augment` act on that normalised ``[n_mels, T]``,
   so for ``stacked`` they follow real time across the channel boundaries;
4. it becomes the model input (``[1, n_mels, T]`` or stacked channels).

Mixup (:func:`mixup`) acts on whole batches in the LightningModule's training step.

    >>> import numpy as np, torch
    >>> x = np.ones((4, 10), dtype=np.float32)
    >>> time_shift(x, 3, "pad")[0].tolist()
    [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    >>> xm, t = mixup(torch.zeros(2, 1), torch.eye(2), 0.75, torch.tensor([1, 0]))
    >>> t.tolist()
    [[0.75, 0.25], [0.25, 0.75]]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from birdstack.config import AugmentConfig, ConfigError, Preprocessing
from birdstack.features.encoding import center_trim, pad_frames, stack_channels
from birdstack.utils import get_logger

log = get_logger("augment")

# a stream of its own, so that augmentation draws never shift the random crops' draws
_AUGMENT_STREAM = 0xA06


def item_rng(seed: int, epoch: int, index: int, draw: int = 0) -> np.random.Generator:
    """The generator of one training item's augmentations in one epoch.

    ``draw``: the how-manyth time the item is served in the epoch (class-balanced
    sampling serves some items more than once; each time gets draws of its own).

    >>> a = item_rng(0, 1, 5).random(); b = item_rng(0, 1, 5).random()
    >>> a == b, a == item_rng(0, 2, 5).random()
    (True, False)
    """
    return np.random.default_rng([seed, epoch, index, draw, _AUGMENT_STREAM])


# ----------------------------------------------------------------------------- item level


def time_shift(x: np.ndarray, k: int, mode: str = "pad") -> np.ndarray:
    """``[..., T]`` shifted by ``k`` frames (``k > 0``: later).

    ``pad`` fills the vacated frames with 0 (the floor), ``roll`` wraps them around.
    """
    if k == 0:
        return x
    if mode == "roll":
        return np.roll(x, k, axis=-1)
    out = np.zeros_like(x)
    if k > 0:
        out[..., k:] = x[..., :-k]
    else:
        out[..., :k] = x[..., -k:]
    return out


def spec_augment(
    x: np.ndarray,
    rng: np.random.Generator,
    time_masks: int,
    time_mask_frames: int,
    freq_masks: int,
    freq_mask_bands: int,
) -> np.ndarray:
    """SpecAugment masks (Park et al. 2019) on a normalised ``[n_mels, T]``, set to 0.

    Each mask's width is drawn from ``0..max`` and its start uniformly; widths are
    capped at the axis length.
    """
    out = np.array(x, copy=True)
    n_mels, t = out.shape
    for _ in range(time_masks):
        w = int(rng.integers(0, min(time_mask_frames, t) + 1))
        s = int(rng.integers(0, t - w + 1))
        out[:, s : s + w] = 0.0
    for _ in range(freq_masks):
        w = int(rng.integers(0, min(freq_mask_bands, n_mels) + 1))
        s = int(rng.integers(0, n_mels - w + 1))
        out[s : s + w, :] = 0.0
    return out


def noise_crop(noise_db: np.ndarray, frames: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``frames``-long crop of a noise clip ``[n_mels, N]`` (tiled when shorter)."""
    n = noise_db.shape[1]
    if n < frames:
        noise_db = np.tile(np.asarray(noise_db), (1, -(-frames // n) + 1))
        n = noise_db.shape[1]
    s = int(rng.integers(0, n - frames + 1))
    return np.asarray(noise_db[:, s : s + frames])


def mix_noise_db(
    signal_db: np.ndarray, noise_db: np.ndarray, snr_db: float, amin: float = 1e-10
) -> np.ndarray:
    """Noise mixed into a signal, both ``[n_mels, T]`` in dB, at ``snr_db`` in the power domain.

    ``10*log10(10^(s/10) + g * 10^(n/10))`` with ``g`` such that the mean mel power of
    the signal over that of the scaled noise is ``snr_db``. (Mel powers of independent
    sounds add in expectation; the cross terms of the exact mixture are left out.)

    >>> s = np.full((2, 3), 10.0); n = np.full((2, 3), -20.0)
    >>> float(mix_noise_db(s, n, snr_db=0.0)[0, 0])  # equal powers: +3 dB
    13.010299956639813
    """
    ps = np.power(10.0, np.asarray(signal_db, dtype=np.float64) / 10.0)
    pn = np.power(10.0, np.asarray(noise_db, dtype=np.float64) / 10.0)
    g = ps.mean() / max(pn.mean() * 10.0 ** (snr_db / 10.0), 1e-30)
    return 10.0 * np.log10(np.maximum(ps + g * pn, amin))


class TrainAugment:
    """The item-level augmentations of one training set (``AugmentConfig``), training only.

    ``noise_files``: cached noise features (``.npy`` dB spectrograms with the run's
    preprocessing, see :func:`noise_features`). :meth:`encode` replaces the plain
    encoding of a training item.
    """

    def __init__(
        self,
        cfg: AugmentConfig,
        preprocessing: Preprocessing,
        noise_files: Sequence[str | Path] = (),
    ) -> None:
        if preprocessing.is_birdnet and cfg.item_level:
            raise ConfigError(
                "augment.time_shift / specaugment / noise_dir act on log-mel spectrograms; "
                "the BirdNET front end's inputs are feature vectors (only augment.mixup_alpha "
                "applies there)"
            )
        if cfg.noise_dir and not noise_files:
            raise ConfigError(f"augment.noise_dir={cfg.noise_dir}: no usable noise clips")
        self.cfg = cfg
        self.pre = preprocessing
        self.norm = preprocessing.input_norm()
        self.noise_files = [str(f) for f in noise_files]
        self._noise: dict[int, np.ndarray] = {}

    def _noise_db(self, j: int) -> np.ndarray:
        if j not in self._noise:
            self._noise[j] = np.load(self.noise_files[j], mmap_mode="r")
        return self._noise[j]

    def add_noise(self, db: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``db`` with a random noise crop mixed in (unchanged without noise or by chance)."""
        c = self.cfg
        if not self.noise_files or db.shape[1] == 0 or rng.random() >= c.noise_prob:
            return db
        noise = noise_crop(
            self._noise_db(int(rng.integers(len(self.noise_files)))), db.shape[1], rng
        )
        snr = float(rng.uniform(*c.noise_snr_db)) + float(rng.uniform(*c.gain_db))
        return mix_noise_db(db, noise, snr, self.pre.spectrogram.amin).astype(np.float32)

    def augment_normalised(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Time shift and SpecAugment masks on a normalised ``[n_mels, T]``."""
        c = self.cfg
        if c.time_shift:
            most = int(c.time_shift * x.shape[-1])
            x = time_shift(x, int(rng.integers(-most, most + 1)), c.shift_mode)
        if c.specaugment:
            x = spec_augment(
                x, rng, c.time_masks, c.time_mask_frames, c.freq_masks, c.freq_mask_bands
            )
        return x

    def encode(self, db: np.ndarray, start: int, rng: np.random.Generator) -> np.ndarray:
        """The augmented model input of one item: a ``segments`` window at ``start``, or
        the ``stacked`` input of the whole recording."""
        enc = self.pre.encoding
        if enc.kind == "segments":
            length = self.pre.window_frames()
            raw = np.asarray(db[:, start : start + length])
        else:
            assert enc.target_frames is not None
            length = enc.target_frames
            raw = center_trim(np.asarray(db), length)
        x = self.norm(self.add_noise(raw, rng))
        x = self.augment_normalised(pad_frames(x, length), rng)
        if enc.kind == "segments":
            return x[None]
        return stack_channels(x, enc.channels)


def noise_features(
    noise_dir: str,
    preprocessing: Preprocessing,
    cache_root: str | Path,
    workers: int,
    progress: bool,
) -> list[str]:
    """The cached feature files of every audio clip under ``noise_dir`` (computed once).

    Features come from :class:`birdstack.features.cache.FeatureCache` with the run's
    own preprocessing, so noise and recordings are the same kind of spectrogram.
    """
    from birdstack.features.cache import FeatureCache
    from birdstack.training.distill import unlabelled_files

    files = unlabelled_files([noise_dir])
    cache = FeatureCache.for_preprocessing(cache_root, preprocessing)
    res = cache.compute_many(files, workers=workers, progress=progress)
    for e in res.failed:
        log.warning("noise clip skipped: %s", e.error)
    out = [str(e.cache_file) for e in res.ok if e.frames > 0]
    log.info("augment: %d noise clip(s) from %s", len(out), noise_dir)
    return out


# ----------------------------------------------------------------------------- batch level


def mixup(
    x: torch.Tensor, targets: torch.Tensor, lam: float, perm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al. 2018): ``lam * a + (1 - lam) * a[perm]`` for inputs and targets.

    ``targets``: float ``[B, C]`` (one-hot, multi-hot, soft or a teacher's scores);
    rows that sum to 1 still do after mixing.
    """
    mixed_x = lam * x + (1.0 - lam) * x[perm]
    mixed_t = lam * targets + (1.0 - lam) * targets[perm]
    return mixed_x, mixed_t


def mixup_draw(
    alpha: float, batch_size: int, seed: int, epoch: int, batch_idx: int, rank: int = 0
) -> tuple[float, torch.Tensor]:
    """``(lam, perm)`` of one training batch: ``lam ~ Beta(alpha, alpha)``, seeded.

    >>> (lam, perm), (lam2, perm2) = mixup_draw(0.4, 4, 0, 0, 0), mixup_draw(0.4, 4, 0, 0, 0)
    >>> lam == lam2 and perm.tolist() == perm2.tolist(), sorted(perm.tolist())
    (True, [0, 1, 2, 3])
    """
    rng = np.random.default_rng([seed, epoch, batch_idx, rank, _AUGMENT_STREAM + 1])
    lam = float(rng.beta(alpha, alpha))
    return lam, torch.from_numpy(rng.permutation(batch_size))


def soft_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.0
) -> torch.Tensor:
    """Cross-entropy against float targets ``[B, C]`` with label smoothing.

    A row's weight is its target mass (a mixup of a labelled and an unlabelled item
    counts by its labelled part; an all-zero row not at all); the loss is the weighted
    mean. With one-hot rows it equals ``F.cross_entropy(logits, labels,
    label_smoothing=smoothing)``.
    """
    mass = targets.sum(-1, keepdim=True)
    smoothed = targets * (1.0 - smoothing) + smoothing * mass / targets.shape[-1]
    rows = -(smoothed * torch.log_softmax(logits, -1)).sum(-1)
    total = mass.sum()
    if float(total) <= 0:
        return logits.new_zeros(())
    return rows.sum() / total


def one_hot_targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Integer labels -> float one-hot ``[B, C]``; ``-1`` (unlabelled) -> a zero row."""
    out = torch.zeros(len(labels), num_classes, device=labels.device)
    ok = labels >= 0
    out[ok] = torch.nn.functional.one_hot(labels[ok], num_classes).to(out)
    return out


def check_augment(cfg: Any) -> None:
    """Refuse augmentations that cannot apply to a (resolved) :class:`~birdstack.config.Config`."""
    if cfg.preprocessing.is_birdnet and cfg.augment.item_level:
        raise ConfigError(
            "augment.time_shift / specaugment / noise_dir act on log-mel spectrograms; the "
            "BirdNET front end's inputs are feature vectors (only augment.mixup_alpha applies)"
        )
    if cfg.augment.noise_dir and not Path(cfg.augment.noise_dir).expanduser().is_dir():
        raise ConfigError(f"augment.noise_dir={cfg.augment.noise_dir}: folder not found")
