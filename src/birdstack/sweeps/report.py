"""Sweep results: per-run figures from the runs' own metric files, tables, curves, report.md.

Every number in a sweep table is read back from the run folders, never from memory:
``result.json`` gives the parameter count and wall time; ``metrics.csv`` (one row per
epoch) gives the validation figures and the curves, read at each run's best epoch
(highest ``val/rec_f1_macro``, ties to the later epoch: the epoch of ``best.ckpt``) or,
with ``compare.epoch: last``, its final epoch. Per variant the table holds the mean and
the sample standard deviation (``ddof=1``; empty with a single run) over its seeds and
folds::

    >>> rows = [read_run_metrics(d, "val/acc", "val/f1_macro") for d in run_dirs]  # doctest: +SKIP
    >>> aggregate_runs(pd.DataFrame(rows))                                        # doctest: +SKIP

For ``segments`` models the comparison uses the recording-level figures logged by
the training module (``val/rec_acc``, ``val/rec_f1_macro``: window probabilities
averaged per recording), so stacked and segments variants are scored per recording
on the same folds; the report says which metric was used.

Variants are also compared in pairs: within each curves figure's group, every variant
against the group's reference (``compare.reference``, else its first variant) on the
runs they share (same fold and seed), with the mean paired difference, its 95 %
t-interval, the paired t-test's p-value and wins/losses over the pairs
(:func:`paired_differences`), so "A beats B" comes with whether it beats the spread.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from birdstack.evaluation.plots import plot_curves
from birdstack.sweeps.runs import Experiment, RunSpec, label_of, slugify
from birdstack.utils import atomic_write_text, get_logger

log = get_logger("report")

PACKAGES = ("birdstack", "torch", "torchvision", "lightning", "torchmetrics", "numpy")
RUN_COLUMNS = [
    "run",
    "variant",
    "fold",
    "seed",
    "status",
    "best_epoch",
    "acc",
    "f1_macro",
    "loss",
    "n_params",
    "wall_time_s",
    "error",
]
TABLE_COLUMNS = [
    "variant",
    "acc_mean",
    "acc_std",
    "f1_macro_mean",
    "f1_macro_std",
    "loss_mean",
    "loss_std",
    "best_epoch_mean",
    "n_params",
    "wall_time_s_mean",
    "n_runs",
    "n_failed",
]


@dataclass(frozen=True)
class MetricChoice:
    """Which logged columns the comparison uses."""

    acc: str
    f1: str
    loss: str
    level: str
    epoch: str = "best"  # "best": highest val/rec_f1_macro (ties: later); "last": the final
    # what the two headline columns are called (multi-label: top-1 and cmAP)
    acc_name: str = "accuracy"
    f1_name: str = "macro-F1"
    # further figures reported as mean ± std per variant: (logged key, column name)
    extra: tuple[tuple[str, str], ...] = ()
    rule: str = "val/rec_f1_macro"  # the figure that picks the best epoch

    def describe(self) -> str:
        when = (
            "at each run's last epoch (no epoch is chosen on the validation fold)"
            if self.epoch == "last"
            else f"at each run's best epoch (highest `{self.rule}`, ties to the later)"
        )
        extra = "".join(f", {name} = `{key}`" for key, name in self.extra)
        return (
            f"{self.acc_name} = `{self.acc}`, {self.f1_name} = `{self.f1}`{extra}, "
            f"loss = `{self.loss}` ({self.level}), all {when}"
        )


STACKED_METRICS = MetricChoice("val/acc", "val/f1_macro", "val/loss", "per recording")
SEGMENT_METRICS = MetricChoice(
    "val/rec_acc",
    "val/rec_f1_macro",
    "val/loss",
    "accuracy and F1 per recording (window probabilities averaged); loss per model input",
)


POOLED_METRICS = MetricChoice(
    "val/rec_acc",
    "val/rec_f1_macro",
    "val/loss",
    "per recording (BirdNET windows pooled; location filter applied when on); loss unfiltered",
)


MULTILABEL_METRICS = MetricChoice(
    "val/rec_top1",
    "val/rec_cmap",
    "val/loss",
    "per recording or clip: window scores pooled by max; open-set = share of negative clips "
    "with a species above its threshold; loss per model input; a single-label run's top-1 "
    "is its recording accuracy, `val/rec_acc`",
    acc_name="top-1",
    f1_name="cmAP",
    extra=(
        ("val/rec_auroc", "macro AUROC"),
        ("val/rec_f1_rowwise", "row-wise F1"),
        ("val/rec_open_set", "open-set FP rate"),
    ),
    rule="val/rec_cmap",
)


# A single-label run in a multi-label sweep logs no top-1: its recording accuracy is that
# figure (the best-scored species is the recording's label).
SINGLE_LABEL_EQUIVALENT = {"val/rec_top1": "val/rec_acc"}


def choose_metrics(
    encodings: Sequence[str], epoch: str = "best", multilabel: bool = False
) -> MetricChoice:
    """Recording-level figures as soon as one variant uses ``segments`` inputs, read at
    each run's ``best`` (highest ``val/rec_f1_macro``, ties to the later) or ``last`` epoch.
    Multi-label sweeps report cmAP, top-1, AUROC, row-wise F1 and the open-set rate."""
    kinds = set(encodings)
    if multilabel:
        base = MULTILABEL_METRICS
    elif "segments" in kinds:
        base = SEGMENT_METRICS
    elif "pooled" in kinds:  # per recording; the location filter shows in val/rec_* only
        base = POOLED_METRICS
    else:
        base = STACKED_METRICS
    return base if epoch == base.epoch else replace(base, epoch=epoch)


@dataclass
class SweepReport:
    """Tables and the report written by :func:`write_sweep_report`."""

    per_run: pd.DataFrame
    table: pd.DataFrame
    report: Path
    metric: MetricChoice
    best_run: str | None
    paired: pd.DataFrame | None = None


# ----------------------------------------------------------------------------- reading


def read_history(run_dir: str | Path) -> pd.DataFrame:
    """``metrics.csv`` of a run (one row per epoch, 0-based ``epoch``), or an empty frame."""
    p = Path(run_dir) / "metrics.csv"
    if not p.is_file():
        return pd.DataFrame()
    return pd.read_csv(p)


def read_run_metrics(
    run_dir: str | Path,
    acc_key: str = "val/acc",
    f1_key: str = "val/f1_macro",
    loss_key: str = "val/loss",
    epoch: str = "best",
    extra: Sequence[str] = (),
) -> dict[str, Any]:
    """One run's row: its best epoch (1-based) and the figures of that epoch (or, with
    ``epoch="last"``, of its last epoch) from ``metrics.csv``.

    The best epoch is the rule's (highest ``val/rec_f1_macro``, ties to the later epoch;
    :func:`birdstack.training.train.best_epoch_index`) on ``metrics.csv``, the epoch of
    the run's ``best.ckpt``. A run whose ``result.json`` names another epoch was chosen
    by an older rule (lowest ``val/loss``): its row uses the rule's epoch and a warning
    says that its ``best.ckpt`` holds the other one.

    ``status`` is ``done`` (``result.json`` present), ``failed`` (``error.txt``) or
    ``unfinished``. Without ``metrics.csv`` the figures fall back to ``result.json``'s.
    """
    d = Path(run_dir)
    row: dict[str, Any] = {c: math.nan for c in RUN_COLUMNS}
    row.update(run=d.name, status="unfinished", error="")
    if (d / "error.txt").is_file():
        lines = (d / "error.txt").read_text(encoding="utf-8").strip().splitlines()
        row.update(status="failed", error=lines[-1] if lines else "error")
    res_path = d / "result.json"
    if not res_path.is_file():
        return row
    res = json.loads(res_path.read_text(encoding="utf-8"))
    best_epoch = int(res.get("best_epoch", -1))
    figures = dict(res.get("best") or {})
    hist = read_history(d)
    rule_epoch = _rule_epoch(hist)
    if rule_epoch is not None and rule_epoch != best_epoch and epoch == "best":
        log.warning(
            "%s: its best.ckpt holds epoch %d (an older rule: lowest val/loss); the tables use "
            "epoch %d (highest val/rec_f1_macro); train it again for a matching checkpoint",
            d,
            best_epoch + 1,
            rule_epoch + 1,
        )
    if rule_epoch is not None:
        best_epoch = rule_epoch
    if epoch == "last":
        figures = dict(res.get("final") or {})
        if not hist.empty:
            figures = hist.sort_values("epoch").iloc[-1].to_dict()
    elif not hist.empty and "epoch" in hist and best_epoch in set(hist["epoch"]):
        figures = hist.loc[hist["epoch"] == best_epoch].iloc[-1].to_dict()
    row.update(
        status="done",
        error="",
        best_epoch=best_epoch + 1,
        acc=float(
            figures.get(acc_key, figures.get(SINGLE_LABEL_EQUIVALENT.get(acc_key), math.nan))
        ),
        f1_macro=float(figures.get(f1_key, math.nan)),
        loss=float(figures.get(loss_key, math.nan)),
        n_params=int(res.get("n_params", 0)),
        wall_time_s=float(res.get("wall_time_s", math.nan)),
    )
    for key in extra:
        row[key] = float(figures.get(key, math.nan))
    return row


def _rule_epoch(hist: pd.DataFrame) -> int | None:
    """The best epoch (0-based) of a ``metrics.csv`` by train's rule, or ``None``."""
    if hist.empty or "epoch" not in hist:
        return None
    from birdstack.training.train import best_epoch_index

    idx = best_epoch_index(hist)
    return None if idx is None else int(hist.loc[idx, "epoch"])


def per_run_table(runs: Sequence[RunSpec], metric: MetricChoice) -> pd.DataFrame:
    """One row per planned run (``RUN_COLUMNS``), read from its folder."""
    rows = []
    for r in runs:
        extra = [k for k, _ in metric.extra]
        row = read_run_metrics(
            r.run_dir, metric.acc, metric.f1, metric.loss, metric.epoch, extra=extra
        )
        row.update(run=r.name, variant=r.variant.label, fold=r.fold, seed=r.seed)
        rows.append(row)
    return pd.DataFrame(rows, columns=RUN_COLUMNS + [k for k, _ in metric.extra])


def aggregate_runs(per_run: pd.DataFrame, order: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean and sample std (``ddof=1``) per variant over its finished runs (``TABLE_COLUMNS``).

    >>> df = pd.DataFrame({"variant": ["a", "a"], "status": ["done", "done"],
    ...     "acc": [0.5, 0.7], "f1_macro": [0.4, 0.6], "loss": [1.0, 0.8],
    ...     "best_epoch": [3, 5], "n_params": [10, 10], "wall_time_s": [2.0, 4.0]})
    >>> t = aggregate_runs(df)
    >>> float(round(t.loc[0, "acc_mean"], 3)), float(round(t.loc[0, "acc_std"], 4))
    (0.6, 0.1414)
    """
    variants = list(order) if order is not None else list(dict.fromkeys(per_run["variant"]))
    rows = []
    for v in variants:
        sub = per_run[per_run["variant"] == v]
        done = sub[sub["status"] == "done"]
        row: dict[str, Any] = {"variant": v}
        extra = [c for c in per_run.columns if c.startswith("val/")]
        for col in ("acc", "f1_macro", "loss", *extra):
            vals = done[col].astype(float)
            row[f"{col}_mean"] = vals.mean() if len(vals) else math.nan
            row[f"{col}_std"] = vals.std(ddof=1) if len(vals) > 1 else math.nan
        nan = math.nan
        row["best_epoch_mean"] = done["best_epoch"].astype(float).mean() if len(done) else nan
        row["n_params"] = int(done["n_params"].iloc[0]) if len(done) else 0
        row["wall_time_s_mean"] = done["wall_time_s"].astype(float).mean() if len(done) else nan
        row["n_runs"] = len(done)
        row["n_failed"] = len(sub) - len(done)
        rows.append(row)
    extra = [f"{c}_{s}" for c in per_run.columns if c.startswith("val/") for s in ("mean", "std")]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS + extra)


PAIRED_COLUMNS = [
    "group",
    "variant",
    "reference",
    "n_pairs",
    *[
        f"{m}_{stat}"
        for m in ("acc", "f1_macro", "loss")
        for stat in ("diff", "diff_std", "ci_low", "ci_high", "p")
    ],
    "f1_wins",
    "f1_losses",
    "verdict",
]


def _paired(a: pd.Series, b: pd.Series) -> dict[str, float]:
    """Mean of ``a - b``, its std, 95 % t-interval, paired t-test p-value, wins, losses,
    over the pairs where both have the figure (a softmax run has no cmAP: no pair).

    >>> r = _paired(pd.Series([0.5, 0.7, 0.9]), pd.Series([float("nan"), 0.6, 0.8]))
    >>> round(r["diff"], 3), math.isnan(r["p"])
    (0.1, False)
    >>> math.isnan(_paired(pd.Series([0.5, 0.7]), pd.Series([float("nan")] * 2))["p"])
    True
    """
    from scipy import stats

    keep = (a.notna() & b.notna()).to_numpy()
    a, b = a[keep].astype(float), b[keep].astype(float)
    d = (a - b).to_numpy()
    n = len(d)
    out = {"diff": float(d.mean()) if n else math.nan}
    out["wins"], out["losses"] = int((d > 0).sum()), int((d < 0).sum())
    out["diff_std"] = float(d.std(ddof=1)) if n > 1 else math.nan
    out["ci_low"] = out["ci_high"] = out["p"] = math.nan
    if n > 1:
        half = stats.t.ppf(0.975, n - 1) * out["diff_std"] / math.sqrt(n)
        out["ci_low"], out["ci_high"] = out["diff"] - half, out["diff"] + half
        if out["diff_std"] > 0:
            out["p"] = float(stats.ttest_rel(a, b).pvalue)
        else:
            out["p"] = 1.0 if out["diff"] == 0 else 0.0
    return out


def paired_differences(
    per_run: pd.DataFrame, groups: dict[str, list[str]], references: dict[str, str]
) -> pd.DataFrame:
    """Each variant minus its group's reference, paired on (fold, seed) (``PAIRED_COLUMNS``).

    ``verdict`` reads the macro-F1 interval: the variant is ``better`` or ``worse`` when
    the 95 % interval of the paired difference excludes 0, else ``within spread``.

    >>> runs = pd.DataFrame({"variant": ["a", "a", "b", "b"], "fold": [0, 1, 0, 1],
    ...     "seed": 0, "status": "done", "acc": [0.5, 0.6, 0.7, 0.7],
    ...     "f1_macro": [0.4, 0.6, 0.7, 0.8], "loss": [1.0, 0.9, 0.8, 0.7]})
    >>> d = paired_differences(runs, {"all": ["a", "b"]}, {"all": "a"})
    >>> row = d.iloc[0]
    >>> round(float(row["f1_macro_diff"]), 3), int(row["n_pairs"]), int(row["f1_wins"])
    (0.25, 2, 2)
    """
    done = per_run[per_run["status"] == "done"]
    rows = []
    for group, labels in groups.items():
        ref = references.get(group, labels[0])
        base = done[done["variant"] == ref].set_index(["fold", "seed"])
        for label in labels:
            if label == ref:
                continue
            other = done[done["variant"] == label].set_index(["fold", "seed"])
            keys = base.index.intersection(other.index)
            row: dict[str, Any] = {
                "group": group,
                "variant": label,
                "reference": ref,
                "n_pairs": len(keys),
            }
            for m in ("acc", "f1_macro", "loss"):
                stats = _paired(other.loc[keys, m], base.loc[keys, m])
                wins, losses = stats.pop("wins"), stats.pop("losses")
                row.update({f"{m}_{k}": v for k, v in stats.items()})
                if m == "f1_macro":
                    row["f1_wins"], row["f1_losses"] = wins, losses
            lo, hi = row["f1_macro_ci_low"], row["f1_macro_ci_high"]
            if math.isnan(lo):
                row["verdict"] = "too few pairs"
            elif lo > 0:
                row["verdict"] = "better"
            elif hi < 0:
                row["verdict"] = "worse"
            else:
                row["verdict"] = "within spread"
            rows.append(row)
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def paired_rows(
    paired: pd.DataFrame, metric: MetricChoice | None = None
) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the paired-differences table."""
    metric = metric or STACKED_METRICS
    a, f = metric.acc_name, metric.f1_name
    header = [
        "variant",
        "vs reference",
        "pairs",
        f"Δ {a} [95% CI]",
        f"Δ {f} [95% CI]",
        f"p ({f})",
        f"{f} wins / losses",
        "Δ loss",
        f"{f} verdict",
    ]

    def ci(r: pd.Series, m: str) -> str:
        if math.isnan(r[f"{m}_diff"]):
            return "–"
        if math.isnan(r[f"{m}_ci_low"]):
            return f"{r[f'{m}_diff']:+.3f}"
        return f"{r[f'{m}_diff']:+.3f} [{r[f'{m}_ci_low']:+.3f}, {r[f'{m}_ci_high']:+.3f}]"

    rows = [
        [
            str(r["variant"]),
            str(r["reference"]),
            str(int(r["n_pairs"])),
            ci(r, "acc"),
            ci(r, "f1_macro"),
            _num(r["f1_macro_p"], ".3f"),
            f"{int(r['f1_wins'])} / {int(r['f1_losses'])}",
            _num(r["loss_diff"], "+.3f"),
            str(r["verdict"]),
        ]
        for _, r in paired.iterrows()
    ]
    return header, rows


# ----------------------------------------------------------------------------- formatting


def _pm(mean: float, std: float, digits: int = 3) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _num(v: Any, fmt: str) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "–"
    return "–" if math.isnan(f) else format(f, fmt)


def table_rows(
    table: pd.DataFrame, metric: MetricChoice | None = None
) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells of the per-variant table (for markdown and rich)."""
    metric = metric or STACKED_METRICS
    extra = [(k, n) for k, n in metric.extra if f"{k}_mean" in table]
    header = [
        "variant",
        metric.acc_name,
        metric.f1_name,
        *[n for _, n in extra],
        "loss",
        "best epoch",
        "parameters",
        "wall time / run",
        "runs",
    ]
    rows = []
    for _, r in table.iterrows():
        runs = f"{int(r['n_runs'])}" + (f" ({int(r['n_failed'])} failed)" if r["n_failed"] else "")
        rows.append(
            [
                str(r["variant"]),
                _pm(r["acc_mean"], r["acc_std"]),
                _pm(r["f1_macro_mean"], r["f1_macro_std"]),
                *[_pm(r[f"{k}_mean"], r[f"{k}_std"]) for k, _ in extra],
                _pm(r["loss_mean"], r["loss_std"]),
                _num(r["best_epoch_mean"], ".1f"),
                f"{int(r['n_params']):,}" if r["n_params"] else "–",
                _num(r["wall_time_s_mean"], ".0f") + " s",
                runs,
            ]
        )
    return header, rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table."""

    def esc(s: str) -> str:
        return str(s).replace("|", "\\|")

    lines = [
        "| " + " | ".join(esc(h) for h in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def print_table(
    table: pd.DataFrame, console: Console, title: str, metric: MetricChoice | None = None
) -> None:
    """The per-variant table as a rich table (fits 80 columns; the report has every column).

    Accuracy, macro-F1 and loss keep their ``mean ± std`` whole; the variant label
    wraps instead of being squeezed out.
    """
    metric = metric or STACKED_METRICS
    header, rows = table_rows(table, metric)
    short = {"variant": "variant", metric.acc_name: "acc", metric.f1_name: "F1", "loss": "loss"}
    if metric.acc_name != "accuracy":
        short[metric.acc_name], short[metric.f1_name] = metric.acc_name, metric.f1_name
    short.update({"wall time / run": "s/run", "runs": "runs"})
    cols = [header.index(h) for h in short]
    t = Table(title=title)
    for h in short.values():
        if h == "variant":
            t.add_column(h, justify="left", overflow="fold", min_width=12)
        else:
            t.add_column(h, justify="right", no_wrap=True)
    for row in rows:
        t.add_row(*(row[i] for i in cols))
    console.print(t)


def unfinished_lines(failed: pd.DataFrame) -> list[str]:
    """One Markdown bullet per status and error: runs that failed alike are listed together.

    >>> df = pd.DataFrame({"run": ["a", "b", "c"], "status": ["failed", "failed", "unfinished"],
    ...                    "error": ["E: no file", "E: no file", ""]})
    >>> unfinished_lines(df)[0]
    '- failed (2 runs: `a`, `b`) — E: no file (see `runs/<run>/error.txt`)'
    """
    out = []
    for (status, error), grp in failed.groupby(["status", "error"], sort=False):
        names = ", ".join(f"`{r}`" for r in grp["run"])
        who = names if len(grp) == 1 else f"{len(grp)} runs: {names}"
        out.append(
            f"- {status} ({who})"
            + (f" — {error}" if error else "")
            + (" (see `runs/<run>/error.txt`)" if status == "failed" else "")
        )
    return out


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that decide the numbers."""
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = "not installed"
    return out


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux), or what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_info() -> dict[str, Any]:
    """CPU count, platform and accelerator (for the report)."""
    import torch

    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        # CPU kernels differ between instruction sets, and so can the last bits of a result
        "cpu": f"{cpu_model()}, torch kernels {torch.backends.cpu.get_cpu_capability()}",
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = ", ".join(
            torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
        )
    else:
        info["gpu"] = "none"
    return info


# ----------------------------------------------------------------------------- figures


def _figure_groups(exp: Experiment) -> dict[str, list[str]]:
    """Variant labels per curves figure (``compare.figures_by``), file stem -> labels."""
    if not exp.figures_by:
        return {"curves": [v.label for v in exp.variants]}
    groups: dict[str, list[str]] = {}
    for v in exp.variants:
        key = label_of({k: v.overrides.get(k) for k in exp.figures_by})
        groups.setdefault(f"curves_{slugify(key)}", []).append(v.label)
    return groups


def comparison_groups(
    exp: Experiment, planned: Sequence[str]
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Curves groups restricted to the variants that were run, and each group's reference
    (groups whose reference was not run are left out)."""
    refs = group_references(exp)
    groups = {
        g: [lab for lab in labels if lab in planned] for g, labels in _figure_groups(exp).items()
    }
    return {g: labels for g, labels in groups.items() if refs[g] in labels}, refs


def group_references(exp: Experiment) -> dict[str, str]:
    """The reference variant of each curves group: ``compare.reference`` or the first one."""
    refs: dict[str, str] = {}
    overrides = {v.label: v.overrides for v in exp.variants}
    for group, labels in _figure_groups(exp).items():
        match = [
            lab
            for lab in labels
            if all(overrides[lab].get(k) == val for k, val in exp.reference.items())
        ]
        refs[group] = match[0] if match else labels[0]
    return refs


def plot_sweep_curves(
    exp: Experiment, runs: Sequence[RunSpec], out_dir: Path, metric: MetricChoice
) -> list[Path]:
    """Validation accuracy and loss per epoch, one line per variant (band: min–max over runs)."""
    histories: dict[str, list[pd.DataFrame]] = {}
    for r in runs:
        h = read_history(r.run_dir)
        if not h.empty and (r.run_dir / "result.json").is_file():
            histories.setdefault(r.variant.label, []).append(h)
    metrics = (
        (metric.acc, f"validation {metric.acc_name} ({metric.acc})"),
        (metric.f1, f"validation {metric.f1_name} ({metric.f1})"),
        (metric.loss, f"validation loss ({metric.loss})"),
    )
    paths = []
    for stem, labels in _figure_groups(exp).items():
        sub = {lab: histories[lab] for lab in labels if lab in histories}
        if not sub:
            continue
        title = exp.title or exp.name
        if stem != "curves":
            title += " — " + stem.removeprefix("curves_")
        paths.append(plot_curves(sub, out_dir / f"{stem}.png", metrics=metrics, title=title))
    return paths


# ----------------------------------------------------------------------------- report


def best_run(per_run: pd.DataFrame) -> str | None:
    """The finished run with the highest accuracy (ties: lower loss), or ``None``."""
    done = per_run[per_run["status"] == "done"].dropna(subset=["acc"])
    if done.empty:
        return None
    done = done.assign(_loss=done["loss"].fillna(math.inf))
    return str(done.sort_values(["acc", "_loss"], ascending=[False, True]).iloc[0]["run"])


def write_sweep_report(
    exp: Experiment,
    runs: Sequence[RunSpec],
    out_dir: str | Path,
    command: str | None = None,
    sweep_wall_s: float | None = None,
    evaluate_best: bool = True,
    console: Console | None = None,
    progress: bool = True,
    trained: int | None = None,
    failed_now: int = 0,
) -> SweepReport:
    """``runs.csv``, ``results.csv``, ``results.md``, curve figures, the best run's
    confusion matrix and ``report.md`` in ``out_dir``."""
    console = console or Console()
    out = Path(out_dir)
    from birdstack.training.train import resolve_config  # encoding "auto" made concrete

    metric = choose_metrics(
        [resolve_config(r.config).preprocessing.encoding.kind for r in runs],
        exp.epoch,
        multilabel=any(r.config.task.multilabel for r in runs),
    )
    per_run = per_run_table(runs, metric)
    planned = list(dict.fromkeys(r.variant.label for r in runs))  # all, or those --only kept
    table = aggregate_runs(per_run, planned)
    atomic_write_text(out / "runs.csv", per_run.to_csv(index=False))
    atomic_write_text(out / "results.csv", table.to_csv(index=False))
    header, rows = table_rows(table, metric)
    md_table = markdown_table(header, rows)
    atomic_write_text(
        out / "results.md",
        f"# {exp.name}: results\n\nMetric: {metric.describe()}. Mean ± sample std over "
        f"seeds and folds.\n\n{md_table}\n",
    )
    figures = plot_sweep_curves(exp, runs, out, metric)
    paired = paired_differences(per_run, *comparison_groups(exp, planned))
    atomic_write_text(out / "differences.csv", paired.to_csv(index=False))
    print_table(
        table,
        console,
        f"{exp.name} — {metric.acc} / {metric.f1} at the {metric.epoch} epoch",
        metric,
    )

    best = best_run(per_run)
    eval_md = ""
    if best is not None and evaluate_best:
        eval_md = _evaluate_best(runs, best, out, console, progress, metric.epoch)

    versions = package_versions()
    machine = machine_info()
    failed = per_run[per_run["status"] != "done"]
    data_paths = sorted({r.config.data.path for r in runs})
    total_run_wall = float(per_run["wall_time_s"].astype(float).sum(skipna=True))
    lines = [
        f"# {exp.name}",
        "",
        exp.description or "",
        "",
        "## Setup",
        "",
        f"- command: `{command or '(Python API)'}`",
        f"- experiment file: `{exp.path}`" if exp.path else "- experiment: (in memory)",
        f"- data: `{', '.join(data_paths)}`",
        f"- runs: {len(runs)} ({len(planned)} variant(s) x folds "
        f"{sorted({r.fold for r in runs})} x seeds {sorted({r.seed for r in runs})}), "
        f"{len(failed)} not finished"
        + (
            f"; only {len(planned)} of the experiment's {len(exp.variants)} variants "
            "were run (`--only`)"
            if len(planned) < len(exp.variants)
            else ""
        ),
        f"- metric: {metric.describe()}",
        f"- wall time: {total_run_wall:.0f} s of training (sum over runs)"
        + (f", {sweep_wall_s:.0f} s for this invocation" if sweep_wall_s is not None else "")
        + (
            f" ({trained} run(s) trained, "
            + (f"{failed_now} failed, " if failed_now else "")
            + f"{len(runs) - trained - failed_now} already finished)"
            if trained is not None
            else ""
        ),
        "- packages: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"- machine: {machine['cpus']} CPU(s) ({machine['cpu']}), "
        f"torch threads {machine['torch_threads']}, "
        f"GPU {machine['gpu']}, {machine['platform']}, Python {machine['python']}",
        f"- written: {time.strftime('%Y-%m-%d %H:%M:%S')}",
        "",
        "## Results per variant",
        "",
        md_table,
        "",
        "Files: [results.csv](results.csv) (per variant), [runs.csv](runs.csv) (per run).",
        "",
    ]
    if len(paired):
        lines += [
            "## Paired differences",
            "",
            "Each variant minus its reference on the same folds and seeds (Δ > 0: higher "
            "than the reference; for loss, lower is better). The interval is the 95 % "
            "t-interval of the mean paired difference, p the paired t-test's; the verdict "
            f"is `better`/`worse` only when the {metric.f1_name} interval excludes 0.",
            "",
            markdown_table(*paired_rows(paired, metric)),
            "",
            "File: [differences.csv](differences.csv).",
            "",
        ]
    lines += [
        "## Validation curves",
        "",
        "Mean over each variant's runs; the band spans their minimum and maximum.",
        "",
    ]
    lines += [f"![{p.stem}]({p.name})\n" for p in figures] or ["(no finished runs)\n"]
    if best is not None:
        lines += ["## Best run", "", f"`{best}` (highest {metric.acc}).", ""]
        lines.append(eval_md)
    if len(failed):
        lines += ["## Runs not finished", "", *unfinished_lines(failed), ""]
    lines += [
        "## Runs",
        "",
        markdown_table(
            ["run", "status", "best epoch", metric.acc_name, metric.f1_name, "loss", "wall time"],
            [
                [
                    r["run"],
                    r["status"],
                    _num(r["best_epoch"], ".0f"),
                    _num(r["acc"], ".3f"),
                    _num(r["f1_macro"], ".3f"),
                    _num(r["loss"], ".3f"),
                    _num(r["wall_time_s"], ".0f") + " s",
                ]
                for _, r in per_run.iterrows()
            ],
        ),
        "",
    ]
    report_path = out / "report.md"
    atomic_write_text(report_path, "\n".join(lines))
    return SweepReport(per_run, table, report_path, metric, best, paired)


def _evaluate_best(
    runs: Sequence[RunSpec],
    best: str,
    out: Path,
    console: Console,
    progress: bool,
    epoch: str = "best",
) -> str:
    """Evaluate the best run's checkpoint of the compared epoch (``best.ckpt`` or
    ``last.ckpt``) on its validation split; markdown section."""
    from birdstack.evaluation.evaluate import evaluate_checkpoint

    run = next(r for r in runs if r.name == best)
    res = json.loads((run.run_dir / "result.json").read_text(encoding="utf-8"))
    if epoch == "last":
        ckpt = run.run_dir / "checkpoints" / "last.ckpt"
    else:
        ckpt = Path(res.get("best_checkpoint") or run.run_dir / "checkpoints" / "best.ckpt")
        if not ckpt.is_file():
            ckpt = run.run_dir / "checkpoints" / "best.ckpt"
    try:
        ev = evaluate_checkpoint(
            ckpt,
            run.config.data.path,
            manifest=run.run_dir / "data" / "manifest.csv",
            split="val",
            out_dir=out / "best_run",
            cache_dir=run.config.data.cache_dir,
            progress=progress,
            console=console,
        )
    except Exception as e:  # the tables are still worth writing
        log.warning("could not evaluate the best run %s: %s", best, e)
        return f"(evaluation of the best checkpoint failed: {type(e).__name__}: {e})\n"
    return ev.markdown(link_prefix="best_run/")
