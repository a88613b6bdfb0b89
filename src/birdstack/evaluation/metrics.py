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
