"""Knowledge distillation: a student learns a teacher checkpoint's soft scores.

``--teacher CKPT`` (any birdstack checkpoint; the BirdNET heads in particular) trains
the student on a mix of the true labels and the teacher's scores for the same audio::

    loss = (1 - alpha) * CE(student, label) + alpha * T^2 * KL(teacher_T || student_T)

where ``_T`` means softmax at temperature ``T`` (Hinton et al. 2015). The teacher
scores every recording once, through its own preprocessing, into a window table
(start and end seconds, probabilities per class); a student input covering
``[a, b]`` seconds gets the mean of the probabilities of the teacher windows whose
centres fall inside it (the nearest window when none does), and a whole-recording
input (``stacked``, ``pooled``) the teacher's recording-level probabilities. So any
teacher fits any student encoding, and random training crops get their own targets.

Teacher scores are cached like features: one ``.npz`` per audio content and teacher
(``<cache>/teacher-<sha1 of the checkpoint>/<sha1[:2]>/<sha1>.npz``), written
atomically, so sweeps over folds and resumed runs score each file once.

A multi-label student (``--task multilabel``) learns from a multi-label teacher (a
detector's per-class probabilities are not a distribution over its classes, so the two
tasks do not teach each other): every output is its own binary problem, with
``(1 - alpha) * BCE(student, labels) + alpha * T^2 * BCE(sigmoid(z / T), sigmoid(z_t / T))``
(:func:`multilabel_distillation_loss`), on the labelled windows, negatives included.

``--unlabelled DIR ...`` (single-label students) adds recordings without labels (other
species, noise, the user's own field recordings): they are trained on the teacher's
scores alone.

``--cross-fit`` (``distill.cross_fit``): the teacher trained on the student's training
recordings scores them with a confidence it has on no new session. Its run's config is
retrained once per training fold ``j`` without ``j`` (and without the validation fold),
and fold ``j``'s recordings get that copy's scores: out-of-fold targets
(:func:`birdstack.training.train.cross_fit_teacher_configs`).

``--distill-embedding W`` (a teacher on BirdNET features) adds ``W`` x the mean squared
error between a training-only ``Linear`` of the student's pooled features and the
teacher's standardised 1024-d BirdNET embedding of the same span (feature
distillation, "hints": Romero et al. 2015): 1024 numbers per window instead of a few
class scores, and informative on unlabelled audio of other species too. The tables
then also hold each window's embedding (float16).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from birdstack.features.audio import AUDIO_EXTENSIONS, find_audio_files
from birdstack.utils import (
    BadInputError,
    BirdstackError,
    atomic_path,
    file_sha1,
    get_logger,
)

log = get_logger("distill")


@dataclass(frozen=True)
class TeacherTable:
    """A teacher's scores for one recording: per window, and for the whole recording."""

    starts_s: np.ndarray  # [W]
    ends_s: np.ndarray  # [W]
    window_probs: np.ndarray  # [W, K] over the student's classes
    probs: np.ndarray  # [K]
    window_embeddings: np.ndarray | None = None  # [W, E] (distill.embedding), else None

    def _span_mean(self, values: np.ndarray, a: float, b: float) -> np.ndarray:
        """Mean of ``values`` (one row per window) over the windows whose centres lie in
        ``[a, b]``, else the nearest window's row."""
        centres = (self.starts_s + self.ends_s) / 2
        inside = (centres >= a) & (centres <= b)
        if inside.any():
            return values[inside].mean(axis=0)
        return values[int(np.argmin(np.abs(centres - (a + b) / 2)))]

    def span(self, a: float, b: float) -> np.ndarray:
        """Mean probabilities of the windows whose centres lie in ``[a, b]`` (else nearest).

        >>> t = TeacherTable(np.array([0., 3.]), np.array([3., 6.]),
        ...                  np.array([[1., 0.], [0., 1.]]), np.array([.5, .5]))
        >>> t.span(0, 5).tolist(), t.span(3, 8).tolist(), t.span(10, 11).tolist()
        ([0.5, 0.5], [0.0, 1.0], [0.0, 1.0])
        """
        if len(self.starts_s) == 0:
            return self.probs
        return self._span_mean(self.window_probs, a, b)

    def _embeddings(self) -> np.ndarray:
        if self.window_embeddings is None:
            raise ValueError("this teacher table holds no embeddings")
        return self.window_embeddings

    def span_embedding(self, a: float, b: float) -> np.ndarray:
        """Mean embedding of the same windows as :meth:`span`."""
        return self._span_mean(self._embeddings(), a, b)

    def embedding(self) -> np.ndarray:
        """The whole recording's mean embedding (``stacked`` / ``pooled`` students)."""
        return self._embeddings().mean(axis=0)


def _npz_bytes(table: TeacherTable) -> bytes:
    buf = io.BytesIO()
    extra = {}
    if table.window_embeddings is not None:
        extra["window_embeddings"] = table.window_embeddings.astype(np.float16)
    np.savez(
        buf,
        starts_s=table.starts_s,
        ends_s=table.ends_s,
        window_probs=table.window_probs.astype(np.float32),
        probs=table.probs.astype(np.float32),
        **extra,
    )
    return buf.getvalue()


class Teacher:
    """A teacher checkpoint scoring audio files for a student's ``classes`` (cached)."""

    def __init__(
        self,
        checkpoint: str | os.PathLike[str],
        classes: list[str],
        cache_root: str | os.PathLike[str],
        threads: int | None = None,
        embeddings: bool = False,
        multilabel: bool = False,
    ) -> None:
        from birdstack.inference.predictor import Predictor

        self.checkpoint = Path(checkpoint)
        self.predictor = Predictor.from_checkpoint(self.checkpoint, threads=threads)
        # a detector teaches a detector: per-class presence probabilities (sigmoid) are not
        # a distribution over the classes (softmax), and neither stands in for the other
        if self.predictor.multilabel != multilabel:
            want, got = (
                ("multi-label", "single-label") if multilabel else ("single-label", "multi-label")
            )
            raise BirdstackError(
                f"{self.checkpoint}: a {got} teacher cannot teach a {want} student; train "
                f"the student with the teacher's task (--task "
                f"{'multiclass' if multilabel else 'multilabel'}) or the teacher with the "
                f"student's (--task {'multilabel' if multilabel else 'multiclass'})"
            )
        # distill.embedding: the tables also hold each window's BirdNET embedding
        self.embeddings = embeddings
        if embeddings and not self.predictor.preprocessing.is_birdnet:
            raise BirdstackError(
                f"{self.checkpoint}: distill.embedding needs a teacher on BirdNET features "
                f"(frontend birdnet); this one reads {self.predictor.preprocessing.frontend}"
            )
        missing = [c for c in classes if c not in self.predictor.classes]
        if missing:
            raise BirdstackError(
                f"{self.checkpoint}: the teacher was not trained on {', '.join(missing)}; a "
                "teacher must know every class of the student (use a teacher trained on the "
                "same species, or select fewer species)"
            )
        self.index = np.array([self.predictor.classes.index(c) for c in classes])
        self.classes = list(classes)
        self.sha1 = file_sha1(self.checkpoint)
        self.dir = Path(cache_root) / f"teacher-{self.sha1[:16]}"
        from birdstack.features.cache import FeatureCache

        self.features = FeatureCache.for_preprocessing(cache_root, self.predictor.preprocessing)

    def _restrict(self, p: np.ndarray) -> np.ndarray:
        """The student's classes; a softmax teacher's scores renormalised over them (a
        multi-label teacher's are per-class probabilities and stay as they are)."""
        q = p[..., self.index]
        if self.predictor.multilabel:
            return q
        return q / np.clip(q.sum(axis=-1, keepdims=True), 1e-12, None)

    def _score(self, path: Path) -> TeacherTable:
        entry = self.features.compute_many([path], workers=1, progress=False)[0]
        if entry.error is not None:
            raise BadInputError(path, entry.error)
        feats = np.load(entry.cache_file)
        res = self.predictor.score_frames([feats], str(path), entry.samples)
        starts = np.asarray(res.starts_s, dtype=np.float64)
        emb = None
        if self.embeddings:  # each window's column of the BirdNET features, embedding rows
            from birdstack.features.birdnet import EMBED_DIM

            cols = np.rint(starts / self.predictor.seconds_per_frame).astype(int)
            cols = np.clip(cols, 0, max(0, feats.shape[1] - 1))
            emb = np.ascontiguousarray(feats[:EMBED_DIM, cols].T, dtype=np.float16)
        return TeacherTable(
            starts,
            np.asarray(res.ends_s, dtype=np.float64),
            self._restrict(np.asarray(res.window_probs, dtype=np.float64)),
            self._restrict(np.asarray(res.probs, dtype=np.float64)),
            emb,
        )

    def table(self, path: str | os.PathLike[str]) -> TeacherTable:
        """The teacher's :class:`TeacherTable` for ``path`` (from the cache when there)."""
        path = Path(path)
        sha = file_sha1(path)
        f = self.dir / sha[:2] / f"{sha}.npz"
        if f.is_file():
            try:
                with np.load(f) as z:
                    emb = z["window_embeddings"] if "window_embeddings" in z.files else None
                    t = TeacherTable(z["starts_s"], z["ends_s"], z["window_probs"], z["probs"], emb)
                # an entry written without embeddings is scored again when they are needed
                complete = emb is not None or not self.embeddings
                if t.probs.shape == (len(self.classes),) and complete:
                    return t
            except (OSError, ValueError, KeyError, EOFError):
                log.warning("damaged teacher cache entry %s; scoring again", f)
        t = self._score(path)
        f.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(f, suffix=".npz") as tmp:
            tmp.write_bytes(_npz_bytes(t))
        return t

    def tables(self, paths: list[str], progress: bool = True) -> list[TeacherTable]:
        """Tables for many files (features computed in parallel first, then cached scores)."""
        from tqdm.auto import tqdm

        self.features.compute_many([Path(p) for p in paths], progress=progress)
        return [
            self.table(p) for p in tqdm(paths, desc="teacher", unit="file", disable=not progress)
        ]


def unlabelled_files(dirs: tuple[str, ...] | list[str]) -> list[Path]:
    """Audio files under each of ``dirs`` (recursively), sorted; a missing folder is an error."""
    out: list[Path] = []
    for d in dirs:
        p = Path(d).expanduser()
        if not p.is_dir():
            raise BadInputError(p, "unlabelled audio folder not found")
        files = find_audio_files(p)
        if not files:
            exts = ", ".join(sorted(AUDIO_EXTENSIONS))
            raise BadInputError(p, f"no audio files ({exts}) in this folder")
        out += files
    return out


def standardize_embeddings(tables: list[TeacherTable]) -> list[TeacherTable]:
    """The tables with every embedding dimension standardised over all their windows.

    BirdNET's embedding dimensions differ in scale by orders of magnitude; standardised,
    each counts alike in the squared error and the loss starts near 1.
    """
    from dataclasses import replace

    rows = [t.window_embeddings for t in tables if t.window_embeddings is not None]
    if not rows:
        raise ValueError("no teacher table holds embeddings")
    allw = np.concatenate(rows).astype(np.float64)
    mean, std = allw.mean(axis=0), allw.std(axis=0)
    std = np.where(std > 1e-6, std, 1.0)
    return [
        replace(t, window_embeddings=((t.window_embeddings - mean) / std).astype(np.float32))
        if t.window_embeddings is not None
        else t
        for t in tables
    ]


def embedding_loss(projected: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error between projected student features and teacher embeddings.

    >>> float(embedding_loss(torch.ones(2, 3), torch.zeros(2, 3)))
    1.0
    """
    return F.mse_loss(projected, target.to(projected.dtype))


def distillation_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_probs: torch.Tensor,
    alpha: float,
    temperature: float,
    smoothing: float = 0.0,
) -> torch.Tensor:
    """``(1 - alpha) * CE`` on labelled items (``labels >= 0``) ``+ alpha * T^2 * KL``.

    Items without a label (``-1``, unlabelled audio) count in the KL term only.
    ``labels`` may be float targets ``[B, K]`` (mixup): the label term is then
    :func:`birdstack.data.augment.soft_cross_entropy` (rows weighted by their mass).

    >>> z = torch.tensor([[2.0, 0.0]]); t = torch.tensor([[0.5, 0.5]])
    >>> round(float(distillation_loss(z, torch.tensor([0]), t, alpha=0.0, temperature=1)), 4)
    0.1269
    """
    labelled = labels >= 0
    ce = logits.new_zeros(())
    if labels.is_floating_point():
        from birdstack.data.augment import soft_cross_entropy

        ce = soft_cross_entropy(logits, labels, smoothing)
    elif labelled.any():
        ce = F.cross_entropy(logits[labelled], labels[labelled], label_smoothing=smoothing)
    t = temperature
    target = torch.softmax(torch.log(teacher_probs.clamp_min(1e-8)) / t, dim=-1)
    kl = F.kl_div(F.log_softmax(logits / t, dim=-1), target, reduction="batchmean") * t * t
    return (1 - alpha) * ce + alpha * kl


def multilabel_distillation_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    teacher_probs: torch.Tensor,
    alpha: float,
    temperature: float,
    label_loss: torch.Tensor,
) -> torch.Tensor:
    """``(1 - alpha) * label_loss + alpha * T^2 * BCE(sigmoid(z / T), sigmoid(z_t / T))``.

    The multi-label form of :func:`distillation_loss`: every class is its own binary
    problem, so the teacher's per-class probability ``p_t`` (logit ``z_t``), softened at
    temperature ``T``, is each output's soft target. ``label_loss`` is the task's own
    loss on ``targets`` (BCE or focal). At ``alpha = 0`` the teacher has no weight; the
    soft term is smallest where the student's outputs equal the teacher's.

    >>> z = torch.tensor([[0.0, 2.0]]); y = torch.tensor([[0.0, 1.0]])
    >>> t = torch.sigmoid(torch.tensor([[-1.0, 1.0]]))
    >>> a = multilabel_distillation_loss(z, y, t, 1.0, 1.0, torch.tensor(0.0))
    >>> b = multilabel_distillation_loss(torch.tensor([[-1.0, 1.0]]), y, t, 1.0, 1.0,
    ...                                  torch.tensor(0.0))
    >>> bool(b < a)
    True
    """
    t = temperature
    teacher_logits = torch.logit(teacher_probs.to(logits.dtype).clamp(1e-6, 1 - 1e-6))
    soft = torch.sigmoid(teacher_logits / t)
    kd = F.binary_cross_entropy_with_logits(logits / t, soft) * t * t
    return (1 - alpha) * label_loss + alpha * kd


def describe_teacher(checkpoint: str | os.PathLike[str]) -> dict[str, Any]:
    """What a student's checkpoint records of its teacher."""
    from birdstack.training.checkpoint import checkpoint_info, load_checkpoint

    info = checkpoint_info(load_checkpoint(checkpoint))
    return {
        "checkpoint": str(checkpoint),
        "sha1": file_sha1(checkpoint),
        "model": info.model_name,
        "classes": info.classes,
    }
