"""Classification figures from predicted probabilities (torchmetrics / scikit-learn).

One call gives every figure the evaluation reports: accuracy, macro-F1, per-class
precision / recall / F1 / support, log loss and the confusion matrix::

    >>> import numpy as np
    >>> probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    >>> m = classification_metrics(np.array([0, 1, 1]), probs, ["a", "b"])
    >>> round(m.accuracy, 3), m.confusion.tolist()
    (0.667, [[1, 0], [1, 1]])

Macro averages follow torchmetrics (the same objects training logs as ``val/acc``
and ``val/f1_macro``): a class that is neither in the labels nor among the
predictions is left out of the macro mean instead of counting as 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import log_loss
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)


@dataclass(frozen=True)
class ClassificationMetrics:
    """Figures of one set of predictions (single-label, ``K`` classes)."""

    classes: list[str]
    n: int
    accuracy: float
    f1_macro: float
    precision_macro: float
    recall_macro: float
    log_loss: float
    per_class: pd.DataFrame
    """Columns ``class, precision, recall, f1, support`` (one row per class)."""
    confusion: np.ndarray
    """``[K, K]`` counts; rows are the true class, columns the predicted one."""

    def to_dict(self) -> dict[str, Any]:
        """Plain values for ``metrics.json``."""
        return {
            "n": self.n,
            "accuracy": self.accuracy,
            "f1_macro": self.f1_macro,
            "precision_macro": self.precision_macro,
            "recall_macro": self.recall_macro,
            "log_loss": self.log_loss,
            "per_class": {
                str(r["class"]): {
                    "precision": float(r["precision"]),
                    "recall": float(r["recall"]),
                    "f1": float(r["f1"]),
                    "support": int(r["support"]),
                }
                for _, r in self.per_class.iterrows()
            },
            "confusion_matrix": self.confusion.astype(int).tolist(),
        }

    def confusion_frame(self) -> pd.DataFrame:
        """The confusion matrix with class names (index: true, columns: predicted)."""
        return pd.DataFrame(
            self.confusion.astype(int),
            index=pd.Index(self.classes, name="true \\ predicted"),
            columns=self.classes,
        )


def classification_metrics(
    y_true: Sequence[int] | np.ndarray, probs: np.ndarray, classes: Sequence[str]
) -> ClassificationMetrics:
    """Every figure for integer labels ``y_true`` ``[N]`` and probabilities ``probs`` ``[N, K]``.

    The predicted class is the arg-max of ``probs``. Log loss uses the probabilities
    as given (renormalised per row, clipped away from 0 by scikit-learn).
    """
    k = len(classes)
    p = np.array(probs, dtype=np.float64)  # a writable copy for torch
    y = np.array(y_true, dtype=np.int64)
    if p.ndim != 2 or p.shape[1] != k:
        raise ValueError(f"probabilities must be [N, {k}], got {list(p.shape)}")
    if len(y) != len(p):
        raise ValueError(f"{len(y)} labels but {len(p)} rows of probabilities")
    if len(y) == 0:
        raise ValueError("no predictions to score")
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"labels must be in [0, {k - 1}]")
    pt, yt = torch.from_numpy(p), torch.from_numpy(y)

    def macro(fn: Any) -> float:
        return float(fn(pt, yt, num_classes=k, average="macro"))

    def per(fn: Any) -> np.ndarray:
        return fn(pt, yt, num_classes=k, average="none").numpy()

    support = np.bincount(y, minlength=k)
    per_class = pd.DataFrame(
        {
            "class": list(classes),
            "precision": per(multiclass_precision),
            "recall": per(multiclass_recall),
            "f1": per(multiclass_f1_score),
            "support": support,
        }
    )
    rows = p / np.clip(p.sum(axis=1, keepdims=True), 1e-12, None)
    return ClassificationMetrics(
        classes=list(classes),
        n=len(y),
        accuracy=float(multiclass_accuracy(pt, yt, num_classes=k, average="micro")),
        f1_macro=macro(multiclass_f1_score),
        precision_macro=macro(multiclass_precision),
        recall_macro=macro(multiclass_recall),
        log_loss=float(log_loss(y, rows, labels=list(range(k)))),
        per_class=per_class,
        confusion=multiclass_confusion_matrix(pt, yt, num_classes=k).numpy().astype(np.int64),
    )


# --------------------------------------------------------------------------- multi-label

# per-class thresholds are kept in this range: a class whose few validation positives
# all scored near 0 must not get a threshold that reports it everywhere
THRESHOLD_RANGE = (0.05, 0.95)


@dataclass(frozen=True)
class MultiLabelMetrics:
    """Figures of multi-label scores (``[N, K]``, sigmoid) against 0/1 targets.

    ``cmap``: class-wise mean average precision over the classes with at least one
    positive (BirdCLEF 2023's cmAP without padding); ``auroc``: macro ROC-AUC over
    classes with positives and negatives; ``top1``: share of rows with a positive
    whose highest-scored class is one; ``f1_samples``: sample-averaged F1 of the
    species above threshold, over rows with a positive; ``f1_rowwise_nocall``:
    BirdCLEF 2021's row-wise micro F1, where a row with no species (truth or
    prediction) counts as the label ``nocall``; ``any_positive_rate``: share of rows
    without a positive on which some species is above threshold (an open-set error
    rate on empty clips).
    """

    classes: list[str]
    n: int
    cmap: float
    auroc: float
    top1: float
    f1_samples: float
    f1_rowwise_nocall: float
    any_positive_rate: float
    per_class: pd.DataFrame
    """Columns ``class, ap, auroc, positives, threshold`` (one row per class)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain values for ``metrics.json`` (NaN as None)."""

        def num(v: float) -> float | None:
            return None if v != v else float(v)

        return {
            "n": self.n,
            "cmap": num(self.cmap),
            "auroc": num(self.auroc),
            "top1": num(self.top1),
            "f1_samples": num(self.f1_samples),
            "f1_rowwise_nocall": num(self.f1_rowwise_nocall),
            "any_positive_rate": num(self.any_positive_rate),
            "per_class": {
                str(r["class"]): {
                    "ap": num(r["ap"]),
                    "auroc": num(r["auroc"]),
                    "positives": int(r["positives"]),
                    "threshold": float(r["threshold"]),
                }
                for _, r in self.per_class.iterrows()
            },
        }


def per_class_ap(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Average precision of every class (NaN where the class has no positive).

    torchmetrics' step-wise AP, the definition of scikit-learn's
    ``average_precision_score``.
    """
    from torchmetrics.functional.classification import binary_average_precision

    y = np.asarray(y_true) > 0
    out = np.full(y.shape[1], np.nan)
    s = torch.from_numpy(np.array(scores, dtype=np.float64))
    for c in np.flatnonzero(y.any(axis=0)):
        out[c] = float(binary_average_precision(s[:, c], torch.from_numpy(y[:, c]).long()))
    return out


def per_class_auroc(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC-AUC of every class (NaN where the class lacks positives or negatives)."""
    from torchmetrics.functional.classification import binary_auroc

    y = np.asarray(y_true) > 0
    out = np.full(y.shape[1], np.nan)
    s = torch.from_numpy(np.array(scores, dtype=np.float64))
    for c in np.flatnonzero(y.any(axis=0) & ~y.all(axis=0)):
        out[c] = float(binary_auroc(s[:, c], torch.from_numpy(y[:, c]).long()))
    return out


def rowwise_f1(y_true: np.ndarray, predicted: np.ndarray, nocall: bool) -> np.ndarray:
    """Per-row F1 of predicted vs true species sets; ``nocall``: empty sets are {nocall}."""
    t = np.asarray(y_true) > 0
    p = np.asarray(predicted).astype(bool)
    tp = (t & p).sum(axis=1).astype(np.float64)
    nt, np_ = t.sum(axis=1).astype(np.float64), p.sum(axis=1).astype(np.float64)
    if nocall:
        both_empty = (nt == 0) & (np_ == 0)
        tp = tp + both_empty
        nt = np.where(nt == 0, 1.0, nt)
        np_ = np.where(np_ == 0, 1.0, np_)
    denom = nt + np_
    return np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 0.0)


def tune_thresholds(
    y_true: np.ndarray, scores: np.ndarray, default: float = 0.5, beta: float = 1.0
) -> np.ndarray:
    """Per class, the threshold (``score >= t``) of highest F-beta on these rows.

    ``beta < 1`` weighs precision more than recall (F0.5: precision twice as much).
    Classes without a positive keep ``default``; the result is clipped to
    :data:`THRESHOLD_RANGE`; of equal scores the higher threshold wins.
    """
    y = np.asarray(y_true) > 0
    s = np.asarray(scores, dtype=np.float64)
    out = np.full(y.shape[1], float(default))
    for c in np.flatnonzero(y.any(axis=0)):
        order = np.argsort(-s[:, c], kind="stable")
        sc, yc = s[order, c], y[order, c]
        tp = np.cumsum(yc)
        fp = np.cumsum(~yc)
        b2 = beta * beta
        f1 = (1 + b2) * tp / ((1 + b2) * tp + b2 * (yc.sum() - tp) + fp)
        last = np.r_[sc[1:] != sc[:-1], True]  # a cut can only fall between distinct scores
        f1 = np.where(last, f1, -1.0)
        best = np.flatnonzero(f1 == f1.max())[0]  # the first = the highest threshold
        out[c] = sc[best]
    return np.clip(out, *THRESHOLD_RANGE)


def multilabel_metrics(
    y_true: np.ndarray,
    scores: np.ndarray,
    classes: Sequence[str],
    thresholds: np.ndarray | float = 0.5,
) -> MultiLabelMetrics:
    """Every multi-label figure (see :class:`MultiLabelMetrics`); targets > 0 are positives.

    >>> y = np.array([[1, 0], [0, 1], [0, 0]])
    >>> s = np.array([[0.9, 0.2], [0.4, 0.6], [0.1, 0.3]])
    >>> m = multilabel_metrics(y, s, ["a", "b"])
    >>> m.cmap, m.top1, m.f1_rowwise_nocall
    (1.0, 1.0, 1.0)
    """
    y = np.asarray(y_true) > 0
    s = np.asarray(scores, dtype=np.float64)
    k = len(classes)
    if s.ndim != 2 or s.shape[1] != k or y.shape != s.shape:
        raise ValueError(f"targets and scores must both be [N, {k}], got {y.shape}, {s.shape}")
    if len(y) == 0:
        raise ValueError("no predictions to score")
    thr = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (k,))
    ap, auc = per_class_ap(y, s), per_class_auroc(y, s)
    has = y.any(axis=1)
    top = s.argmax(axis=1)
    pred = s >= thr[None, :]

    def mean(v: np.ndarray) -> float:
        v = v[~np.isnan(v)]
        return float(v.mean()) if len(v) else float("nan")

    per = pd.DataFrame(
        {
            "class": list(classes),
            "ap": ap,
            "auroc": auc,
            "positives": y.sum(axis=0),
            "threshold": thr,
        }
    )
    return MultiLabelMetrics(
        classes=list(classes),
        n=len(y),
        cmap=mean(ap),
        auroc=mean(auc),
        top1=float(y[has, top[has]].mean()) if has.any() else float("nan"),
        f1_samples=float(rowwise_f1(y[has], pred[has], False).mean())
        if has.any()
        else float("nan"),
        f1_rowwise_nocall=float(rowwise_f1(y, pred, True).mean()),
        any_positive_rate=float(pred[~has].any(axis=1).mean()) if (~has).any() else float("nan"),
        per_class=per,
    )
