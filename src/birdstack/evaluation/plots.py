"""Figures in the study's style: validation curves per epoch, confusion matrices.

>>> import pandas as pd
>>> h = pd.DataFrame({"epoch": [0, 1], "val/acc": [0.5, 0.7], "val/loss": [1.2, 0.9]})
>>> plot_curves({"adamw lr=0.001": [h]}, "curves.png")   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from birdstack.utils import atomic_path  # noqa: E402

CURVE_METRICS = (("val/acc", "validation accuracy"), ("val/loss", "validation loss"))
LOG_SPAN = 20.0  # a loss panel spanning more than this factor gets a log axis


def _save(fig: plt.Figure, out: str | Path) -> Path:
    out = Path(out)
    with atomic_path(out, suffix=out.suffix) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format=out.suffix.lstrip(".") or "png")
    plt.close(fig)
    return out


def wants_log_axis(values: Sequence[float], span: float = LOG_SPAN) -> bool:
    """Whether positive values spread over more than ``span`` times (then a log axis reads better).

    >>> wants_log_axis([1.2, 1.9, 540.0]), wants_log_axis([1.2, 2.1]), wants_log_axis([0.0, 5.0])
    (True, False, False)
    """
    vals = [float(v) for v in values if np.isfinite(v)]
    if not vals or min(vals) <= 0:
        return False
    return max(vals) / min(vals) > span


def plot_curves(
    runs: Mapping[str, Sequence[pd.DataFrame]],
    out: str | Path,
    metrics: Sequence[tuple[str, str]] = CURVE_METRICS,
    title: str | None = None,
) -> Path:
    """One panel per metric, one line per run name; a band shows min–max over its seeds/folds.

    A loss panel whose values span more than ``LOG_SPAN`` times is drawn on a log axis,
    so one diverging run does not flatten the others.
    """
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.2), squeeze=False)
    for ax, (key, label) in zip(axes[0], metrics):
        drawn: list[float] = []
        for name, histories in runs.items():
            series = [h.set_index("epoch")[key] for h in histories if key in h]
            if not series:
                continue
            df = pd.concat(series, axis=1)
            x = df.index.to_numpy() + 1
            mean = df.mean(axis=1).to_numpy()
            # markers where there are few epochs (a 1-epoch run is otherwise invisible)
            marker = "o" if len(x) <= 30 else None
            (line,) = ax.plot(x, mean, label=name, lw=1.6, marker=marker, ms=3)
            drawn += [float(np.nanmin(df.to_numpy())), float(np.nanmax(df.to_numpy()))]
            if df.shape[1] > 1:
                lo, hi = df.min(axis=1), df.max(axis=1)
                if len(x) > 1:
                    ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.18, lw=0)
                else:
                    ax.vlines(x, lo, hi, color=line.get_color(), alpha=0.5, lw=4)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if "loss" in key and wants_log_axis(drawn):
            ax.set_yscale("log")
            label += " (log scale)"
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(
            handles,
            labels,
            loc="lower center",
            ncol=min(5, len(labels)),
            fontsize=8,
            bbox_to_anchor=(0.5, -0.02 - 0.04 * ((len(labels) - 1) // 5)),
        )
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08 + 0.04 * ((len(labels) - 1) // 5), 1, 1))
    return _save(fig, out)


def plot_confusion(
    matrix: np.ndarray, classes: Sequence[str], out: str | Path, title: str | None = None
) -> Path:
    """Confusion matrix (rows: true, columns: predicted) with counts and row-normalised colour."""
    m = np.asarray(matrix, dtype=float)
    norm = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    k = len(classes)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.0 + 0.6 * k), max(4.0, 0.8 + 0.55 * k)))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                f"{int(m[i, j])}",
                ha="center",
                va="center",
                color="white" if norm[i, j] > 0.5 else "black",
                fontsize=8,
            )
    ax.set_xticks(range(k), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="row share")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, out)


def plot_pr_curves(
    targets: np.ndarray,
    scores: np.ndarray,
    classes: Sequence[str],
    out: str | Path,
    title: str | None = None,
    n_classes: int = 8,
) -> Path:
    """Precision-recall curves: micro-average over all classes, and the ``n_classes``
    classes with most positives (scikit-learn's ``precision_recall_curve``)."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y = np.asarray(targets) > 0
    s = np.asarray(scores, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    if y.any():
        p, r, _ = precision_recall_curve(y.ravel(), s.ravel())
        ap = average_precision_score(y.ravel(), s.ravel())
        ax.plot(r, p, color="black", lw=2.2, label=f"micro-average (AP {ap:.2f})")
    order = np.argsort(-y.sum(axis=0), kind="stable")[:n_classes]
    for c in order:
        if not y[:, c].any():
            continue
        p, r, _ = precision_recall_curve(y[:, c], s[:, c])
        ap = average_precision_score(y[:, c], s[:, c])
        ax.plot(r, p, lw=1.2, label=f"{classes[c]} ({int(y[:, c].sum())}; AP {ap:.2f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out)
