"""``train(config)``: the one entry point every experiment and sweep run goes through.

    >>> from birdstack.config import Config
    >>> cfg = Config.from_dict({"data": {"path": "data/birds-demo"}, "trainer": {"epochs": 2},
    ...                         "out_dir": "runs/demo"})                 # doctest: +SKIP
    >>> result = train(cfg)                                               # doctest: +SKIP
    >>> result.best["val/acc"]                                            # doctest: +SKIP

A run folder holds::

    config.yaml              the resolved config
    data/manifest.csv        one row per recording (kept / dropped and why, fold)
    checkpoints/best.ckpt    the best epoch (see below); checkpoints/last.ckpt (for --resume)
    logs/metrics.csv         Lightning's CSV log
    metrics.csv              one row per epoch (train/…, val/…)
    curves.png               validation accuracy and loss per epoch
    result.json              best epoch, its metrics, parameters, wall time (written last)

The best epoch (``best.ckpt``, ``result.json``'s ``best``, a sweep's ``best`` figures)
is the one of highest recording-level macro-F1 on the validation fold
(``val/rec_f1_macro``, :data:`BEST_METRIC`; multi-label runs: row-wise F1 with nocall over
every validation recording, negatives included, ``val/rec_f1_rowwise_all``: the figure of
what ``predict`` reports, thresholds and abstentions included; cmAP ignores the thresholds
and on birds-dev picked an epoch whose thresholds flagged 182 of 539 NIPS4B clips, where
the last epoch flagged none), a tie going to the later epoch
(:func:`best_epoch_index`). Validation loss is not used: a model that predicts one
class can have the lowest loss in an early epoch. ``trainer.early_stopping_patience``
watches the same figure.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from rich.console import Console

from birdstack.config import Config, ConfigError, resolve_training, to_dict
from birdstack.data.datamodule import BirdDataModule
from birdstack.data.prepare import PreparedData, prepare
from birdstack.features.taxonomy import ClassMapping
from birdstack.models import create_model_from_config
from birdstack.training.callbacks import EMAWeights, PreciseBatchNorm, progress_callback
from birdstack.training.checkpoint import AtomicCheckpointIO, load_checkpoint
from birdstack.training.module import OPTIMIZERS, BirdClassifier
from birdstack.utils import (
    atomic_write_json,
    atomic_write_text,
    get_logger,
    remove_stale_temp_files,
)

log = get_logger("train")

# the figure that chooses the best epoch (higher is better; ties: the later epoch)
BEST_METRIC = "val/rec_f1_macro"
# ... of a multi-label run: row-wise F1 (nocall) of the recordings, negatives included
MULTILABEL_BEST_METRIC = "val/rec_f1_rowwise_all"


def best_metric(cfg: Config) -> str:
    """The figure that picks ``best.ckpt`` for this run's task."""
    return MULTILABEL_BEST_METRIC if cfg.task.multilabel else BEST_METRIC


@dataclass(frozen=True)
class TrainResult:
    """What a finished run reports (also saved as ``result.json``)."""

    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best: dict[str, float]
    history: pd.DataFrame
    wall_time_s: float
    n_params: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) not used
    net: torch.nn.Module | None = field(
        default=None, repr=False
    )  # the trained network (last epoch)


def resolve_config(cfg: Config) -> Config:
    """The config with the feature front end its model reads, and that front end's
    training defaults where the config leaves them open (:func:`resolve_training`).

    A head on BirdNET windows (``birdnet_*``) switches ``preprocessing.frontend`` to
    ``birdnet``, so ``--model birdnet_mlp`` is all a user has to say; a spectrogram
    model with ``frontend=birdnet`` is an error. ``encoding.kind="auto"`` becomes the
    front end's own: ``pooled`` for BirdNET heads, ``segments`` for spectrograms.
    """
    from birdstack.models import is_model, list_models, model_entry

    if not is_model(cfg.model.name):
        raise ConfigError(
            f"unknown model {cfg.model.name!r}; choose one of {', '.join(list_models())}"
        )
    if cfg.task.multilabel and cfg.preprocessing.encoding.pool == "mean":
        # a species heard in one window of a recording is in the recording
        cfg = cfg.override({"preprocessing.encoding.pool": "max"})
    wanted = model_entry(cfg.model.name).frontend
    if wanted == "birdnet" and cfg.preprocessing.frontend != "birdnet":
        cfg = cfg.override({"preprocessing.frontend": "birdnet"})
    if wanted == cfg.preprocessing.frontend:  # encoding and training "auto" made concrete
        return resolve_training(
            dataclasses.replace(cfg, preprocessing=cfg.preprocessing.resolved())
        )
    raise ConfigError(
        f"model {cfg.model.name!r} reads log-mel spectrograms, but preprocessing.frontend="
        f"{cfg.preprocessing.frontend!r}; use a birdnet_* model (birdstack models) or "
        "frontend=logmel"
    )


def validate_config(cfg: Config) -> None:
    """Fail before any work starts on options that cannot work together."""
    resolve_config(cfg)
    if cfg.task.multilabel and cfg.distill.teacher and cfg.distill.unlabelled:
        raise ConfigError(
            "unlabelled audio (--unlabelled) is for single-label students: a multi-label "
            "student learns its teacher's scores on its own labelled windows (soundscapes, "
            "negatives); pass further field audio as --negatives when it holds no target "
            "species, or train a single-label student with --task multiclass"
        )
    if cfg.optim.name.lower() not in OPTIMIZERS:
        raise ConfigError(
            f"unknown optimizer {cfg.optim.name!r}; choose one of {', '.join(OPTIMIZERS)}"
        )
    enc = cfg.preprocessing.encoding
    if (
        enc.kind == "segments"
        and not cfg.preprocessing.is_birdnet
        and cfg.preprocessing.window_frames() < 8
    ):
        raise ConfigError("encoding.window_s is too short for a spectrogram input (< 8 frames)")
    from birdstack.data.augment import check_augment

    check_augment(resolve_config(cfg))
    world = _check_trainer_settings(cfg)
    if cfg.distill.cross_fit and world > 1:
        raise ConfigError(
            "distill.cross_fit trains its teachers in one process; train the student on one "
            f"device (--devices 1), not {world}"
        )


def _check_trainer_settings(cfg: Config) -> int:
    """Let Lightning check accelerator, devices, strategy and precision now, not after prepare."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    t = cfg.trainer
    # deterministic=None: checking must not switch torch's global deterministic mode
    kwargs = {**_trainer_kwargs(cfg), "deterministic": None}
    try:
        return int(L.Trainer(**kwargs, logger=False, enable_checkpointing=False).world_size)
    except (MisconfigurationException, ValueError, TypeError, RuntimeError) as e:
        raise ConfigError(
            f"trainer settings accelerator={t.accelerator!r}, devices={t.devices!r}, "
            f"strategy={t.strategy!r}, num_nodes={t.num_nodes}, precision={t.precision!r} "
            f"cannot be used here: {e}"
        ) from None


def epoch_history(log_dir: Path) -> pd.DataFrame:
    """Collapse Lightning's CSV logs (one row per logging call) into one row per epoch.

    A resumed run logs into a fresh ``metrics.csv``; earlier parts were kept as
    ``metrics.part<N>.csv`` and are read first, later rows winning for an epoch.
    """
    parts = sorted(log_dir.glob("metrics.part*.csv"), key=lambda p: int(p.stem[12:]))
    parts += [log_dir / "metrics.csv"]
    frames = [pd.read_csv(p) for p in parts if p.is_file() and p.stat().st_size > 0]
    frames = [f for f in frames if "epoch" in f]
    if not frames:
        return pd.DataFrame()
    raw = pd.concat(frames, ignore_index=True)
    hist = raw.drop(columns=[c for c in ("step",) if c in raw]).groupby("epoch").last()
    return hist.reset_index()


def history_frame(rows: list[dict[str, float]]) -> pd.DataFrame:
    """One row per epoch (``epoch`` first, then the metric columns sorted, as in the CSV log)."""
    hist = pd.DataFrame(rows)
    cols = ["epoch", *sorted(c for c in hist.columns if c != "epoch")]
    hist = hist[cols].sort_values("epoch").reset_index(drop=True)
    hist["epoch"] = hist["epoch"].astype(int)
    return hist


def _trainer_kwargs(cfg: Config) -> dict[str, Any]:
    t = cfg.trainer
    devices: Any = t.devices
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    accelerator = t.accelerator
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    return {
        "max_epochs": t.epochs,
        "accelerator": accelerator,
        "devices": devices,
        "strategy": t.strategy,
        "num_nodes": t.num_nodes,
        "precision": t.precision,
        # CUDA has no deterministic kernels for some backward ops: warn there instead of failing.
        "deterministic": (True if on_cpu else "warn") if t.deterministic else False,
        "enable_progress_bar": t.progress,
        "limit_train_batches": t.limit_train_batches,
        "log_every_n_steps": 1,
        "num_sanity_val_steps": 0,
        "enable_model_summary": False,
        # the DataModule splits training between DDP processes itself and gives every
        # process all validation windows (BirdDataModule._loader)
        "use_distributed_sampler": False,
    }


def scientific_names(prepared: PreparedData) -> dict[str, str]:
    """Class -> scientific name, from the metadata's ``scientific_name`` column when present."""
    m = prepared.manifest
    if "scientific_name" not in m:
        return {}
    names = {}
    for c in prepared.classes:
        vals = m.loc[(m["primary_label"] == c) & m["scientific_name"].notna(), "scientific_name"]
        if len(vals):
            names[c] = str(vals.iloc[0])
    return names


def birdnet_class_map(cfg: Config, prepared: PreparedData) -> ClassMapping | None:
    """The classes' BirdNET label indices, when the model or the location filter needs them.

    Unmapped classes are named in a warning, never mapped silently.
    """
    from birdstack.models import model_entry

    needs = model_entry(cfg.model.name).needs_class_map or cfg.location.filter != "off"
    if not needs:
        return None
    from birdstack.features import birdnet
    from birdstack.features.taxonomy import map_classes

    mapping = map_classes(
        prepared.classes,
        birdnet.labels(prepared.preprocessing.birdnet.model_file),
        scientific_names(prepared),
    )
    if mapping.unmapped:
        log.warning(mapping.message())
    return mapping


def build_module(cfg: Config, prepared: PreparedData) -> BirdClassifier:
    """Network + LightningModule for a config and its prepared data."""
    from birdstack.models import model_entry

    in_chans = prepared.preprocessing.input_shape()[0]
    mapping = birdnet_class_map(cfg, prepared)
    needs_map = model_entry(cfg.model.name).needs_class_map
    net = create_model_from_config(
        cfg.model,
        num_classes=len(prepared.classes),
        in_chans=in_chans,
        class_map=mapping.indices if mapping is not None and needs_map else None,
    )
    meta: dict[str, Any] = {
        "model": {"name": cfg.model.name, "args": dict(net.model_args)},
        "preprocessing": to_dict(prepared.preprocessing),
        "config": cfg.to_dict(),
        "scientific_names": scientific_names(prepared),
    }
    if mapping is not None:
        meta["birdnet_map"] = {
            "indices": list(mapping.indices),
            "unmapped": list(mapping.unmapped),
            "notes": dict(mapping.notes),
        }
    if prepared.preprocessing.is_birdnet:
        from birdstack.features.birdnet import ATTRIBUTION, identity

        meta["backbone"] = {**identity(prepared.preprocessing.birdnet), "credit": ATTRIBUTION}
    if cfg.distill.teacher:
        from birdstack.training.distill import describe_teacher

        meta["teacher"] = describe_teacher(teacher_path(cfg))
        if cfg.distill.cross_fit:
            meta["teacher"]["cross_fit"] = {
                str(j): describe_teacher(p) for j, p in cross_fit_teacher_paths(cfg).items()
            }
    return BirdClassifier(
        net,
        cfg.optim,
        prepared.classes,
        meta=meta,
        seed=cfg.trainer.seed,
        pool=prepared.preprocessing.encoding.pool,
        distill=cfg.distill,
        task=cfg.task,
        augment=cfg.augment,
        embedding_dim=embedding_dim(cfg),
    )


def embedding_dim(cfg: Config) -> int | None:
    """Size of the teacher embedding a student matches (``distill.embedding > 0``)."""
    if not (cfg.distill.teacher and cfg.distill.embedding > 0):
        return None
    from birdstack.features.birdnet import EMBED_DIM

    return EMBED_DIM


def fold_seed_path(template: str, cfg: Config) -> str:
    """``template`` with ``{fold}`` (the validation fold) and ``{seed}`` filled in."""
    return (
        template.format(fold=cfg.data.val_fold, seed=cfg.trainer.seed)
        if "{" in template
        else template
    )


def teacher_path(cfg: Config) -> str:
    """``distill.teacher`` with ``{fold}`` / ``{seed}`` filled in (one teacher per fold)."""
    return fold_seed_path(str(cfg.distill.teacher), cfg)


def check_teacher_leakage(
    teacher: str, val_paths: pd.Series, what: str = "this run's validation recordings"
) -> None:
    """Refuse a teacher whose run trained on this run's validation recordings (or on
    ``what`` else it must not have heard).

    The teacher's run folder (``<run>/checkpoints/x.ckpt`` -> ``<run>/data/manifest.csv``)
    says which recordings it trained on; a teacher that saw them would hand their
    labels to the student. Files are compared by content (SHA-1).
    """
    from birdstack.training.checkpoint import trained_on

    seen = trained_on(teacher, list(val_paths))
    if seen is None:
        log.warning(
            "teacher %s has no run manifest beside it: cannot check that it never trained on %s",
            teacher,
            what,
        )
        return
    leaked = [p for p, s in zip(val_paths, seen, strict=True) if s]
    if leaked:
        raise ConfigError(
            f"teacher {teacher} was trained on {len(leaked)} of {what} ({len(val_paths)}, "
            f"e.g. {Path(leaked[0]).name}); its scores would leak their labels. Use a teacher "
            "trained without this validation fold, e.g. "
            "--teacher 'RUNS/fused__fold{fold}__seed0/checkpoints/last.ckpt', with the same "
            "data selection, folds and seed as the student"
        )


def warn_labelled_in_unlabelled(
    unlabelled: pd.DataFrame, kept: pd.DataFrame, val_fold: int
) -> None:
    """Warn when the unlabelled audio holds recordings of the labelled data set.

    Files are compared by content (the feature cache's SHA-1 names). A validation
    recording among them makes the validation scores measure the transductive use (the
    student has trained on the teacher's scores of the very audio it is scored on: what
    a user distilling onto their own deployment audio gets, not what new recordings
    get); a training recording is drawn twice, once with its label and once without.
    """
    sha = kept["cache_file"].astype(str).map(lambda f: Path(f).stem)
    fold_of = dict(zip(sha, kept["fold"].astype(int)))
    folds = [fold_of.get(Path(f).stem) for f in unlabelled["cache_file"].astype(str)]
    n_val = sum(f == val_fold for f in folds)
    n_train = sum(f is not None and f != val_fold for f in folds)
    if n_val:
        log.warning(
            "%d unlabelled file(s) are recordings of the validation fold %d (same audio): "
            "the validation scores measure distillation onto the audio scored, not new "
            "recordings",
            n_val,
            val_fold,
        )
    if n_train:
        log.warning(
            "%d unlabelled file(s) are labelled training recordings (same audio): they are "
            "drawn twice, with and without their label",
            n_train,
        )


def cross_fit_teacher_configs(cfg: Config) -> dict[int, Config]:
    """``distill.cross_fit``: the teacher's own config, once per training fold ``j``,
    retrained on the student's data without fold ``j`` and without the student's
    validation fold (``data.exclude_folds``), validated on ``j``: the teacher of fold
    ``j``'s recordings. Their runs go to ``<run>/teachers/fold<j>``. Empty without
    ``distill.cross_fit``.
    """
    if not (cfg.distill.teacher and cfg.distill.cross_fit):
        return {}
    from birdstack.config import load_yaml

    teacher = Path(teacher_path(cfg))
    saved = teacher.parent.parent / "config.yaml"
    if not saved.is_file():
        raise ConfigError(
            f"distill.cross_fit retrains the teacher with its own settings, but {teacher} has "
            f"no run config beside it ({saved}); pass the checkpoint inside its run folder"
        )
    tcfg = Config.from_dict(load_yaml(saved))
    if tcfg.distill.teacher:
        raise ConfigError(
            f"distill.cross_fit: {teacher} was itself distilled (from "
            f"{tcfg.distill.teacher}); cross-fit a teacher trained on labels"
        )
    d = cfg.data
    return {
        j: tcfg.override(
            {
                "data.path": d.path,
                "data.n_folds": d.n_folds,
                "data.seed": d.seed,
                "data.val_fold": j,
                "data.exclude_folds": [d.val_fold],
                "data.cache_dir": d.cache_dir,
                "data.workers": d.workers,
                "trainer.progress": cfg.trainer.progress,
                "out_dir": str(Path(cfg.out_dir) / "teachers" / f"fold{j}"),
            }
        )
        for j in range(d.n_folds)
        if j != d.val_fold
    }


def cross_fit_teacher_paths(
    cfg: Config, configs: dict[int, Config] | None = None
) -> dict[int, str]:
    """Fold -> the checkpoint (same name as ``distill.teacher``'s) scoring that fold
    (``configs``: :func:`cross_fit_teacher_configs`, read here when not given)."""
    if configs is None:
        configs = cross_fit_teacher_configs(cfg)
    name = Path(teacher_path(cfg)).name
    return {j: str(Path(c.out_dir) / "checkpoints" / name) for j, c in configs.items()}


def train_cross_fit_teachers(cfg: Config) -> dict[int, str]:
    """Train (or reuse, or resume) the ``distill.cross_fit`` teachers; fold -> checkpoint.

    A teacher run that finished with the same settings is reused, so a resumed student
    and a rerun sweep train each teacher once.
    """
    configs = cross_fit_teacher_configs(cfg)
    paths = cross_fit_teacher_paths(cfg, configs)
    for j, tcfg in configs.items():
        run = Path(tcfg.out_dir)
        finished = (
            (run / "result.json").is_file()
            and Path(paths[j]).is_file()
            and not saved_config_differences(run, tcfg, VOLATILE_KEYS)
        )
        if finished:
            continue
        log.info("distill.cross_fit: training the teacher of fold %d in %s", j, run)
        train(tcfg, resume=(run / "checkpoints" / "last.ckpt").is_file())
    return paths


def distillation_inputs(
    cfg: Config, prepared: PreparedData
) -> tuple[dict[str, Any] | None, pd.DataFrame | None]:
    """The teacher's scores for every training recording (and the unlabelled audio).

    Returns ``(path -> TeacherTable, unlabelled records)``, or ``(None, None)`` without
    ``distill.teacher``. The unlabelled audio's features come from the run's own cache.
    """
    d = cfg.distill
    if not d.teacher:
        return None, None
    from birdstack.data.prepare import cache_root
    from birdstack.features.cache import FeatureCache
    from birdstack.training.distill import Teacher, unlabelled_files

    root = cache_root(cfg.data.cache_dir)
    ckpt = teacher_path(cfg)
    m = prepared.kept
    paths = m.loc[m["fold"] != cfg.data.val_fold, "path"].astype(str).tolist()
    val_paths = m.loc[m["fold"] == cfg.data.val_fold, "path"].astype(str)
    check_teacher_leakage(ckpt, val_paths)

    def make_teacher(checkpoint: str) -> Teacher:
        return Teacher(
            checkpoint,
            prepared.classes,
            root,
            embeddings=d.embedding > 0,
            multilabel=cfg.task.multilabel,
        )

    teacher = make_teacher(ckpt)
    # distill.cross_fit: fold j's recordings are scored by the teacher trained without j
    scored: dict[str, Any] = {}
    for j, inner in cross_fit_teacher_paths(cfg).items():
        fold_paths = m.loc[m["fold"] == j, "path"].astype(str)
        check_teacher_leakage(
            inner,
            pd.concat([fold_paths, val_paths]),
            f"the recordings of folds {j} and {cfg.data.val_fold} it must not have heard",
        )
        inner_tables = make_teacher(inner).tables(fold_paths.tolist(), cfg.trainer.progress)
        scored.update(zip(fold_paths, inner_tables))
    unlabelled = None
    if d.unlabelled:
        files = unlabelled_files([fold_seed_path(u, cfg) for u in d.unlabelled])
        cache = FeatureCache.for_preprocessing(root, prepared.preprocessing)
        res = cache.compute_many(files, workers=cfg.data.workers, progress=cfg.trainer.progress)
        for e in res.failed:
            log.warning("unlabelled audio skipped: %s", e.error)
        unlabelled = pd.DataFrame(
            [
                {
                    "path": str(e.path),
                    "cache_file": str(e.cache_file),
                    "frames": int(e.frames),
                    "primary_label": "",
                    "fold": -1,
                }
                for e in res.ok
            ]
        )
        paths += unlabelled["path"].tolist()
        log.info("distillation: %d unlabelled recording(s) added", len(unlabelled))
        warn_labelled_in_unlabelled(unlabelled, m, cfg.data.val_fold)
    rest = [p for p in paths if p not in scored]
    scored.update(zip(rest, teacher.tables(rest, progress=cfg.trainer.progress)))
    tables = [scored[p] for p in paths]
    if d.embedding > 0:
        from birdstack.training.distill import standardize_embeddings

        tables = standardize_embeddings(tables)
    return dict(zip(paths, tables)), unlabelled


def describe_training(cfg: Config) -> str:
    """One line for the console: what a (resolved) config trains with, defaults included.

    >>> line = describe_training(resolve_config(Config()))
    >>> line[:60]
    'training: mobilenet_compact, adamw lr 0.001, warm-up 1 epoch'
    >>> line.split("; ")[1]
    'training only: SpecAugment, mixup 0.4 (no noise: --noise-dir DIR adds it)'
    >>> describe_training(resolve_config(Config().override({"model.name": "birdnet_linear"})))[-15:]
    'no augmentation'
    """
    o, a = cfg.optim, cfg.augment
    schedule = {
        "none": "constant rate",
        "cosine": "cosine per epoch",
        "warmup_cosine": f"warm-up {o.warmup_epochs:g} epoch(s) + cosine",
    }[o.scheduler]
    parts = [f"{cfg.model.name}", f"{o.name} lr {o.lr:g}", schedule]
    if o.label_smoothing:
        parts.append(f"label smoothing {o.label_smoothing:g}")
    parts.append(f"{cfg.trainer.epochs} epochs of batch {cfg.trainer.batch_size}")
    if cfg.trainer.ema_decay is not None:
        parts.append(f"weights averaged (EMA {cfg.trainer.ema_decay:g})")
    d = cfg.distill
    if d.teacher:
        extra = f", embedding {d.embedding:g}" if d.embedding > 0 else ""
        unl = f", {len(d.unlabelled)} unlabelled folder(s)" if d.unlabelled else ""
        if d.unlabelled and d.unlabelled_share is not None:
            unl += f" at {d.unlabelled_share:.0%} of the draws"
        if d.cross_fit:
            extra += f", cross-fitted over {cfg.data.n_folds - 1} training folds"
        parts.append(f"distilled (alpha {d.alpha:g}, temperature {d.temperature:g}{extra}{unl})")
    aug = []
    if a.time_shift:
        aug.append(f"time shift {a.time_shift:g}")
    if a.specaugment:
        aug.append("SpecAugment")
    if a.mixup_alpha:
        aug.append(f"mixup {a.mixup_alpha:g}")
    if a.noise_dir:
        lo, hi = a.noise_snr_db
        aug.append(f"noise from {a.noise_dir} at {lo:g}-{hi:g} dB SNR")
    elif not cfg.preprocessing.is_birdnet:
        aug.append("(no noise: --noise-dir DIR adds it)")
    line = "training: " + ", ".join(parts)
    if not aug or aug[0].startswith("("):
        return line + "; no augmentation" + (" " + aug[0] if aug else "")
    return line + "; training only: " + ", ".join(aug).replace(", (", " (")


def train_augment(cfg: Config, prepared: PreparedData) -> Any:
    """The training set's item augmentations (``None`` when none is on); noise clips are
    turned into features with the run's preprocessing through the feature cache."""
    if not cfg.augment.item_level:
        return None
    from birdstack.data.augment import TrainAugment, noise_features
    from birdstack.data.prepare import cache_root

    noise: list[str] = []
    if cfg.augment.noise_dir:
        root = cache_root(cfg.data.cache_dir)
        noise = noise_features(
            cfg.augment.noise_dir,
            prepared.preprocessing,
            root,
            cfg.data.workers,
            cfg.trainer.progress,
        )
    return TrainAugment(cfg.augment, prepared.preprocessing, noise)


def location_factors_for(
    records: pd.DataFrame, class_map: Any, cfg: Config, model_file: str | None = None
) -> torch.Tensor | None:
    """``[n_records, K]`` location-filter factors from each recording's place and date."""
    if cfg.location.filter == "off" or class_map is None:
        return None
    from birdstack.features.birdnet import as_float, location_factors, week_48

    rows = []
    for _, r in records.iterrows():
        lat, lon = as_float(r.get("latitude")), as_float(r.get("longitude"))
        date = r.get("date")
        prior = location_factors(
            class_map,
            lat,
            lon,
            week_48(date if isinstance(date, str) else None),
            cfg.location.filter,
            cfg.location.threshold,
            model_file,
        )
        rows.append(prior.factors)
    return torch.from_numpy(np.stack(rows)) if rows else None


#: keys that change where files go, speed or memory, never a result: a run folder saved
#: with other values is still the same run (BirdNET's threads and windows per call give
#: identical features, see BirdnetConfig); the sweeps' check of finished runs ignores them
VOLATILE_KEYS = (
    "out_dir",
    "trainer.progress",
    "data.cache_dir",
    "data.workers",
    "preprocessing.birdnet.threads",
    "preprocessing.birdnet.batch_size",
)
#: what a resumed run may change on top: the hardware and how many epochs (a longer run
#: continues the shorter one); everything else shapes the result
RESUME_FREE_KEYS = (
    *VOLATILE_KEYS,
    "trainer.epochs",
    "trainer.early_stopping_patience",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.strategy",
    "trainer.num_nodes",
    "trainer.num_workers",
)


def saved_config_differences(run_dir: Path, cfg: Config, ignore: tuple[str, ...]) -> list[str]:
    """Keys where ``run_dir/config.yaml`` differs from ``cfg``, both resolved as train()
    resolves them, so a run made before a default changed is caught too (none: no file)."""
    from birdstack.config import config_differences, load_yaml

    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return []
    try:
        saved = resolve_config(Config.from_dict(load_yaml(saved_path)))
    except ConfigError as e:
        return [f"config.yaml unreadable ({e})"]
    return config_differences(saved, resolve_config(cfg), ignore=ignore)


def check_resume_config(cfg: Config, run_dir: Path) -> None:
    """Refuse to ``--resume`` a run with settings other than its own (``config.yaml``): the
    second half would train another model than the first."""
    diffs = saved_config_differences(run_dir, cfg, RESUME_FREE_KEYS)
    if diffs:
        raise ConfigError(
            f"{run_dir} was trained with other settings ({'; '.join(diffs[:4])}"
            f"{'; ...' if len(diffs) > 4 else ''}); resume it with its own: "
            f"birdstack train --config {run_dir / 'config.yaml'} --resume (add --epochs N to "
            "train longer)"
        )


def train(cfg: Config, resume: bool = False) -> TrainResult:
    """Prepare the data (cached), train, checkpoint, and write the run's metrics and curves."""
    validate_config(cfg)
    cfg = resolve_config(cfg)
    run_dir = Path(cfg.out_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    if run_dir.joinpath("result.json").exists() and not resume:
        log.warning("%s already holds a finished run; it will be overwritten", run_dir)
    if last.exists() and not resume:
        raise ConfigError(
            f"{run_dir} already holds a run (checkpoints/last.ckpt); pass --resume to continue "
            "it or choose another --out folder"
        )
    if resume and last.exists():
        load_checkpoint(last)  # a checkpoint that is not plain values is refused here, early
        check_resume_config(cfg, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for d in (run_dir, run_dir / "data", run_dir / "checkpoints"):
        remove_stale_temp_files(d)  # left by a run that was killed while writing
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    start = time.perf_counter()
    # before the run's own seeding: the teachers' training leaves no trace in its streams
    train_cross_fit_teachers(cfg)

    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    prepared = prepare(
        cfg.data,
        cfg.preprocessing,
        run_dir / "data",
        progress=cfg.trainer.progress,
        task=cfg.task,
    )
    Console(stderr=True).print(describe_training(cfg))
    # the teacher's network is built (and its scores computed) outside the run's random
    # stream: a student starts from the weights it would have without a teacher
    with torch.random.fork_rng(devices=[]):
        teacher, unlabelled = distillation_inputs(cfg, prepared)
    dm = BirdDataModule(
        prepared,
        val_fold=cfg.data.val_fold,
        batch_size=cfg.trainer.batch_size,
        num_workers=cfg.trainer.num_workers,
        seed=cfg.trainer.seed,
        teacher=teacher,
        unlabelled=unlabelled,
        task=cfg.task,
        augment=train_augment(cfg, prepared),
        sampling=cfg.data.sampling,
        unlabelled_share=cfg.distill.unlabelled_share,
    )
    if len(dm.train_set) == 0 or len(dm.val_set) == 0:
        raise ConfigError(
            f"fold {cfg.data.val_fold} leaves {len(dm.train_set)} training and "
            f"{len(dm.val_set)} validation samples; use more data or fewer folds"
        )
    module = build_module(cfg, prepared)
    bmap = module.meta.get("birdnet_map")
    module.val_factors = location_factors_for(
        dm.val_records,
        bmap["indices"] if bmap else None,
        cfg,
        prepared.preprocessing.birdnet.model_file,
    )
    if cfg.task.multilabel and "negative" in dm.val_records:
        module.val_negative = torch.from_numpy(
            dm.val_records["negative"].fillna(False).astype(bool).to_numpy().copy()
        )
    trainable = any(p.requires_grad for p in module.net.parameters())
    monitor = best_metric(cfg)

    ckpt_cb = LaterTiesCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor=monitor,
        mode="max",
        auto_insert_metric_name=False,
        enable_version_counter=False,
        # after the epoch's training figures are logged, so a checkpoint holds the whole epoch
        save_on_train_epoch_end=True,
    )
    # Lightning 2.6 writes save_last only when the monitored checkpoint improved; --resume
    # needs the latest epoch, so "last" is its own checkpoint, rewritten after every epoch.
    last_cb = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="last",
        monitor=None,
        save_top_k=1,
        enable_version_counter=False,
        save_on_train_epoch_end=True,
    )
    callbacks: list[Any] = [ckpt_cb, last_cb]
    if cfg.trainer.early_stopping_patience is not None:
        callbacks.append(
            EarlyStopping(monitor=monitor, mode="max", patience=cfg.trainer.early_stopping_patience)
        )
    if cfg.trainer.ema_decay is not None and trainable:
        # before precise BN: its statistics are then those of the averaged weights
        callbacks.append(EMAWeights(cfg.trainer.ema_decay))
    if cfg.trainer.precise_bn:
        callbacks.append(PreciseBatchNorm())
    if cfg.trainer.progress:
        callbacks.append(progress_callback())  # TQDM on a terminal, one line per epoch in logs
    trainer = L.Trainer(
        callbacks=callbacks,
        logger=CSVLogger(save_dir=str(run_dir), name="", version="logs"),
        plugins=[AtomicCheckpointIO()],
        **_trainer_kwargs(cfg),
    )
    ckpt_path = str(last) if (resume and last.exists()) else None
    log_dir = run_dir / "logs"
    if ckpt_path:
        log.info("resuming from %s", ckpt_path)
        if (log_dir / "metrics.csv").is_file():  # keep the epochs logged before the interruption
            n = len(list(log_dir.glob("metrics.part*.csv")))
            (log_dir / "metrics.csv").rename(log_dir / f"metrics.part{n}.csv")
    if trainable:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    else:  # nothing to train (BirdNET's own scores): score the validation fold once
        trainer.validate(module, datamodule=dm, verbose=False)
        module.history = [
            {
                "epoch": 0,
                **{
                    k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")
                },
            }
        ]
        for name in ("best", "last"):
            trainer.save_checkpoint(run_dir / "checkpoints" / f"{name}.ckpt", weights_only=True)
        ckpt_cb.best_model_path = str(run_dir / "checkpoints" / "best.ckpt")

    wall = time.perf_counter() - start
    # the module's history comes from the checkpoints (whole even after a kill); the CSV
    # logs are the fallback
    history = history_frame(module.history) if module.history else epoch_history(log_dir)
    n_params = sum(p.numel() for p in module.net.parameters() if p.requires_grad)
    best = _best_row(history)
    result = TrainResult(
        run_dir=run_dir,
        best_checkpoint=Path(ckpt_cb.best_model_path or last),
        last_checkpoint=last,
        best=best,
        history=history,
        wall_time_s=wall,
        n_params=n_params,
        skipped=list(prepared.skipped),
        net=module.net.eval(),
    )
    if trainer.is_global_zero:
        _write_outputs(result, prepared, (dm.train_records, dm.val_records))
    return result


def best_epoch_index(history: pd.DataFrame, metric: str | None = None) -> Any | None:
    """The index label of the best epoch's row: highest ``metric``, ties to the later epoch.

    ``history``: one row per epoch (an ``epoch`` column, as ``metrics.csv``). A missing
    figure (NaN) counts as the lowest score. ``None`` when there is no such column.
    The rule of ``best.ckpt`` (:class:`LaterTiesCheckpoint`) and of ``result.json``.

    >>> h = pd.DataFrame({"epoch": [0, 1, 2, 3], "val/loss": [0.5, 0.9, 0.8, 1.0],
    ...                   "val/rec_f1_macro": [0.1, 0.6, 0.6, 0.4]})
    >>> int(h.loc[best_epoch_index(h), "epoch"])
    2

    ``metric=None``: :data:`BEST_METRIC`, or for a multi-label run's history (which
    has no such column) :data:`MULTILABEL_BEST_METRIC`.
    """
    if metric is None:
        metric = BEST_METRIC if BEST_METRIC in history else MULTILABEL_BEST_METRIC
    if history.empty or metric not in history:
        return None
    hist = history.sort_values("epoch", kind="stable") if "epoch" in history else history
    score = pd.to_numeric(hist[metric], errors="coerce").fillna(-np.inf)
    return score[::-1].idxmax()  # idxmax takes the first of equal values: reversed, the last


def _best_row(history: pd.DataFrame) -> dict[str, float]:
    idx = best_epoch_index(history)
    if idx is None:
        return {}
    return {k: float(v) for k, v in history.loc[idx].items() if pd.notna(v)}


class LaterTiesCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose top-1 checkpoint moves to a later epoch of an equal score.

    Lightning (2.6) replaces its kept checkpoint only on a strictly better score
    (``torch.gt`` for ``mode="max"``), so of equal scores it keeps the first; macro-F1 on
    a few validation recordings ties often, and the later epoch is the better-trained
    model of the two. A NaN score counts as the lowest (Lightning stores it as -inf).
    Only ``save_top_k=1`` is changed.
    """

    def check_monitor_top_k(self, trainer: L.Trainer, current: torch.Tensor | None = None) -> bool:
        if current is None or self.save_top_k != 1 or not self.best_k_models:
            return super().check_monitor_top_k(trainer, current)
        if torch.isnan(current):
            current = torch.full_like(current, float("inf" if self.mode == "min" else "-inf"))
        kept = self.best_k_models[self.kth_best_model_path]
        better = torch.le(current, kept) if self.mode == "min" else torch.ge(current, kept)
        # every process must take the same decision (DDP)
        return trainer.strategy.reduce_boolean_decision(bool(better))


def _write_outputs(
    result: TrainResult, prepared: PreparedData, n_split: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    from birdstack.evaluation.plots import plot_curves

    run_dir = result.run_dir
    if not result.history.empty:
        atomic_write_text(run_dir / "metrics.csv", result.history.to_csv(index=False))
        metrics = None
        if "val/rec_cmap" in result.history:  # a multi-label run
            metrics = (
                ("val/rec_cmap", "validation cmAP (per recording)"),
                ("val/loss", "validation loss"),
            )
        plot_curves(
            {run_dir.name: [result.history]},
            run_dir / "curves.png",
            **({"metrics": metrics} if metrics else {}),
        )
    summary = {
        "run_dir": str(run_dir),
        "best_checkpoint": str(result.best_checkpoint),
        "best_epoch": int(result.best.get("epoch", -1)),
        "best": result.best,
        "final": {k: float(v) for k, v in result.history.iloc[-1].items() if pd.notna(v)}
        if not result.history.empty
        else {},
        "n_params": result.n_params,
        "wall_time_s": round(result.wall_time_s, 2),
        "classes": prepared.classes,
        "n_train_recordings": len(n_split[0]),
        "n_val_recordings": len(n_split[1]),
    }
    atomic_write_json(run_dir / "result.json", json.loads(json.dumps(summary, default=str)))
