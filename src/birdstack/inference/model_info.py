"""What a trained model is, read from its own file: ``birdstack info`` and :func:`model_info`.

A checkpoint carries its class list, preprocessing, model, task (and a detector's
per-class thresholds), the config it trained with, the teacher it learnt from and its
validation figures per epoch; an ONNX export carries all but the config and the
figures. Before deploying a model, or when a colleague hands one over, this says which
species it knows, what audio it expects, what data and recipe made it and how it
scored on its held-out fold, without loading any audio.

    >>> info = model_info("runs/demo/checkpoints/best.ckpt")      # doctest: +SKIP
    >>> info.classes[:2], info.validation["val/rec_f1_macro"]      # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from birdstack.config import Preprocessing, to_dict
from birdstack.utils import BadInputError


@dataclass(frozen=True)
class ModelInfo:
    """A model file's description (see :func:`model_info`)."""

    path: str
    kind: str  # "checkpoint" or "onnx"
    model: str
    task: str  # "multiclass" or "multilabel"
    classes: list[str]
    preprocessing: Preprocessing
    scientific_names: dict[str, str] = field(default_factory=dict)
    thresholds: list[float] | None = None  # a detector's, one per class
    parameters: int | None = None  # checkpoints only
    epoch: int | None = None  # epochs trained when it was saved (1-based); checkpoints only
    epochs: int | None = None  # epochs the run was configured for
    data: dict[str, Any] | None = None  # the run's data settings
    training: str | None = None  # one line: optimiser, schedule, recipe, distillation
    teacher: dict[str, Any] | None = None  # checkpoint, sha1, model of a distilled student's
    validation: dict[str, float] = field(default_factory=dict)  # val/* at ``epoch``
    n_validation: int | None = None  # held-out recordings (from the run's manifest)
    chosen_by: str | None = None  # the validation figure that picked this epoch (best.ckpt)
    backbone: dict[str, Any] | None = None  # BirdNET's model file, sha256 and credit
    source: str | None = None  # an ONNX export's checkpoint

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One model input: ``(channels, n_mels, frames)``, or ``(features,)`` for BirdNET."""
        return self.preprocessing.input_shape()

    def to_dict(self) -> dict[str, Any]:
        """Plain values (for ``--json``)."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["preprocessing"] = to_dict(self.preprocessing)
        out["input_shape"] = list(self.input_shape)
        return out


def model_info(path: str | os.PathLike[str]) -> ModelInfo:
    """Describe a birdstack checkpoint (``.ckpt``) or ONNX export (``.onnx``).

    Read safely (a checkpoint with ``weights_only=True``); a file that is neither is a
    :class:`~birdstack.utils.BadInputError` naming it.
    """
    p = Path(path)
    if p.suffix.lower() == ".onnx":
        return _onnx_info(p)
    return _checkpoint_info(p)


def _checkpoint_info(p: Path) -> ModelInfo:
    from birdstack.config import Config, from_dict
    from birdstack.data.prepare import read_manifest
    from birdstack.inference.export import scientific_names_from_checkpoint
    from birdstack.training.checkpoint import (
        build_model_from_checkpoint,
        load_checkpoint,
        run_manifest,
    )
    from birdstack.training.train import describe_training

    ckpt = load_checkpoint(p)
    block = ckpt["birdstack"]
    net, info = build_model_from_checkpoint(ckpt)
    parameters = sum(t.numel() for t in net.parameters())
    saved_epoch = int(ckpt.get("epoch", -1))
    validation: dict[str, float] = {}
    for row in ckpt.get("birdstack_history", []):
        if int(row.get("epoch", -2)) == saved_epoch:
            validation = {
                k: float(v) for k, v in row.items() if k.startswith("val/") and v is not None
            }
    cfg = from_dict(Config, info.config) if info.config else None
    chosen_by = None  # best.ckpt: the epoch its run's checkpoint callback picked
    for state in (ckpt.get("callbacks") or {}).values():
        if not (isinstance(state, dict) and state.get("monitor")):
            continue
        if Path(str(state.get("best_model_path") or "")).name == p.name:
            chosen_by = str(state["monitor"])
    n_val = None
    manifest = run_manifest(p)
    if manifest is not None:
        with contextlib.suppress(BadInputError):  # no validation rows: say nothing
            n_val = len(read_manifest(manifest, "val"))
    return ModelInfo(
        path=str(p),
        kind="checkpoint",
        model=info.model_name,
        task=str(block.get("task", "multiclass")),
        classes=info.classes,
        preprocessing=info.preprocessing,
        scientific_names=scientific_names_from_checkpoint(ckpt),
        thresholds=[float(t) for t in block["thresholds"]] if block.get("thresholds") else None,
        parameters=parameters,
        epoch=saved_epoch + 1 if saved_epoch >= 0 else None,
        epochs=cfg.trainer.epochs if cfg is not None else None,
        data=info.config.get("data") if info.config else None,
        training=describe_training(cfg) if cfg is not None else None,
        teacher=_teacher(block.get("teacher")),
        validation=validation,
        n_validation=n_val,
        chosen_by=chosen_by,
        backbone=block.get("backbone") or None,
    )


def _teacher(teacher: dict[str, Any] | None) -> dict[str, Any] | None:
    if not teacher:
        return None
    return {k: teacher[k] for k in ("checkpoint", "sha1", "model") if k in teacher}


def _onnx_info(p: Path) -> ModelInfo:
    try:
        from birdstack.inference.export import read_onnx_metadata

        meta = read_onnx_metadata(p)
    except ImportError as e:
        raise BadInputError(
            p, f"reading an ONNX export needs the onnx extra: pip install 'birdstack[onnx]' ({e})"
        ) from None
    thresholds = meta.get("thresholds")
    return ModelInfo(
        path=str(p),
        kind="onnx",
        model=str(meta["model"].get("name", "?")),
        task="multilabel" if thresholds else "multiclass",
        classes=list(meta["classes"]),
        preprocessing=meta["preprocessing"],
        scientific_names=dict(meta.get("scientific_names") or {}),
        thresholds=[float(t) for t in thresholds] if thresholds else None,
        backbone=meta.get("backbone") or None,
        source=meta.get("source"),
    )


# ----------------------------------------------------------------------------- text


def describe_frontend(pre: Preprocessing) -> str:
    """One line on what audio a model expects and how it becomes features.

    >>> describe_frontend(Preprocessing())
    'log-mel: 32000 Hz, 128 mel bands 50-14000 Hz, FFT 2048, hop 512 (62.5 frames per s)'
    >>> describe_frontend(Preprocessing(frontend="birdnet"))[:47]
    'BirdNET V2.4: 48000 Hz, 3 s windows, embeddings'
    """
    sr = pre.audio.sample_rate
    if pre.is_birdnet:
        hop = pre.birdnet.hop_s
        return f"BirdNET V2.4: {sr} Hz, 3 s windows, embeddings and scores (hop {hop:g} s)"
    s = pre.spectrogram
    line = (
        f"log-mel: {sr} Hz, {s.n_mels} mel bands {s.fmin:g}-{s.fmax:g} Hz, FFT {s.n_fft}, "
        f"hop {s.hop_length} ({s.frames_per_second(sr):.1f} frames per s)"
    )
    if s.band_norm != "none":
        line += f", band norm {s.band_norm}"
    return line


def describe_inputs(pre: Preprocessing) -> str:
    """One line on what one model input covers and how a recording's scores are pooled.

    >>> describe_inputs(Preprocessing())
    '5 s windows (hop 5 s), window scores pooled per recording by mean'
    """
    enc = pre.resolved().encoding
    if enc.kind == "segments":
        return (
            f"{enc.window_s:g} s windows (hop {enc.hop_s:g} s), "
            f"window scores pooled per recording by {enc.pool}"
        )
    if enc.kind == "pooled":
        return "a recording's BirdNET windows pooled into one input"
    frames = enc.target_frames
    span = f" ({pre.input_seconds():.1f} s)" if frames else ""
    trimmed = f"a whole recording trimmed to a common length{span}"
    return f"{trimmed}, cut into {enc.channels} stacked channels"


def info_lines(info: ModelInfo) -> list[tuple[str, str]]:
    """``(field, text)`` rows for the console."""
    rows = []
    shape = " x ".join(str(n) for n in info.input_shape)
    if info.preprocessing.is_birdnet:
        from birdstack.features.birdnet import EMBED_DIM, N_SPECIES

        shape += f" BirdNET features ({EMBED_DIM}-d embedding + {N_SPECIES} species logits)"
    params = f", {info.parameters:,} parameters" if info.parameters is not None else ""
    rows.append(("model", f"{info.model}{params}, input {shape}"))
    rows.append(("front end", describe_frontend(info.preprocessing)))
    rows.append(("inputs", describe_inputs(info.preprocessing)))
    n = len(info.classes)
    if info.task == "multilabel":
        task = f"detector: {n} classes, sigmoid outputs, a threshold per class (below)"
    else:
        task = f"single-label: softmax over {n} classes (names one in every input)"
    rows.append(("task", task))
    if info.data:
        d = info.data
        held = f"fold {d.get('val_fold')} of {d.get('n_folds')} held out"
        held += f" (folds grouped by {d.get('group_by', 'session')})"
        if info.n_validation is not None:
            held += f", {info.n_validation} validation recordings"
        rows.append(("trained on", f"{d.get('path')}; {held}"))
    if info.epoch is not None:
        of = f" of {info.epochs}" if info.epochs else ""
        rows.append(("saved after", f"epoch {info.epoch}{of}"))
    if info.training:
        rows.append(("recipe", info.training.removeprefix("training: ")))
    if info.teacher:
        t = info.teacher
        rows.append(
            ("teacher", f"{t.get('checkpoint')} ({t.get('model')}, sha1 {str(t.get('sha1'))[:12]})")
        )
    if info.validation:
        v = info.validation
        order = sorted(v, key=lambda k: (not k.startswith("val/rec_"), k))
        figures = ", ".join(f"{k} {v[k]:.3f}" for k in order)
        rows.append(("validation", f"at that epoch: {figures}"))
        if info.chosen_by:
            rows.append(
                (
                    "",
                    f"(the epoch with the best {info.chosen_by} on these validation "
                    "recordings, so its figures are optimistic; last.ckpt's are not chosen)",
                )
            )
    if info.backbone:
        b = info.backbone
        rows.append(("backbone", f"{b.get('file', '?')} (sha256 {str(b.get('sha256', '?'))[:16]})"))
        if b.get("credit"):
            rows.append(("", str(b["credit"])))
    if info.source:
        rows.append(("exported from", info.source))
    return rows
