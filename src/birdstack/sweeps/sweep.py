"""Experiment sweeps: one YAML file -> many ``train(config)`` runs -> tables, figures, report.

An experiment file is small and readable::

    name: study_optimizers
    description: Optimizers and learning rates (Table 1, Figs 1-2).
    base:                        # a Config, as nested keys (or base_file: other.yaml, or both)
      data: {path: data/birds-demo, top_k: 6}
      model: {name: mobilenet_compact}
      trainer: {epochs: 20}
    grid:                        # every combination is one variant
      optim.name: [adam, adamw, rmsprop, adagrad, sgd]
      optim.lr: [0.01, 0.0001]
    variants:                    # and/or an explicit list (crossed with grid when both are given)
      - {label: scratch, model.pretrained: false}
      - {label: imagenet, model.pretrained: true}
    seeds: [0]                   # trainer.seed of each repetition
    folds: all                   # all data.n_folds validation folds, or a list such as [0]
    compare:
      figures_by: [optim.lr]     # one curves figure per value (default: one figure)
      reference: {optim.name: adam}  # paired differences against this variant of each
                                     # figure group (default: the group's first variant)
      epoch: last                # compare each run's last epoch (default best: the epoch
                                 # of highest val/rec_f1_macro, chosen on the validation fold)

Every run gets its own folder ``OUT/runs/<variant>__fold<k>__seed<s>/`` (its
``out_dir``). Starting the sweep again skips finished runs (``result.json``
present), resumes unfinished ones from ``checkpoints/last.ckpt``, and retries
failed ones; a failing run is reported (``error.txt`` in its folder) and the
others go on. Then :mod:`birdstack.sweeps.report` writes the tables, figures
and ``report.md``.

    >>> exp = load_experiment("experiments/smoke.yaml")               # doctest: +SKIP
    >>> result = run_sweep(exp, "outputs/sweeps/smoke", epochs=1)      # doctest: +SKIP
    >>> result.table[["variant", "acc_mean", "acc_std", "n_runs"]]     # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import shlex
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from rich.console import Console
from rich.table import Table

from birdstack.config import (
    Config,
    ConfigError,
    deep_merge,
    dotted_to_nested,
    flat_keys,
    load_yaml,
    load_yaml_with_base,
)
from birdstack.sweeps.runs import (
    Experiment,
    RunSpec,
    Variant,
    format_value,
    label_of,
    slugify,
)
from birdstack.utils import (
    atomic_write_json,
    atomic_write_text,
    get_logger,
    remove_stale_temp_files,
)

log = get_logger("sweep")

EXPERIMENT_KEYS = (
    "name",
    "description",
    "base",
    "base_file",
    "grid",
    "variants",
    "seeds",
    "folds",
    "compare",
)
COMPARE_KEYS = ("figures_by", "title", "reference", "epoch")
RUN_FILE = "sweep_run.json"


@dataclass
class SweepResult:
    """What :func:`run_sweep` produced."""

    out_dir: Path
    runs: list[RunSpec]
    per_run: pd.DataFrame
    table: pd.DataFrame
    report: Path | None
    failed: list[str]
    wall_time_s: float
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)


# ----------------------------------------------------------------------------- parsing


def _variants(data: dict[str, Any], where: str) -> list[Variant]:
    grid = data.get("grid") or {}
    listed = data.get("variants")
    if not isinstance(grid, dict):
        raise ConfigError(f"{where}: 'grid' must map dotted keys to lists of values")
    for k, vals in grid.items():
        if not isinstance(vals, list) or not vals:
            raise ConfigError(f"{where}: grid.{k} must be a non-empty list of values")
    if listed is not None and (not isinstance(listed, list) or not listed):
        raise ConfigError(f"{where}: 'variants' must be a non-empty list of mappings")
    explicit: list[tuple[str | None, dict[str, Any]]] = [(None, {})]
    if listed:
        explicit = []
        for i, item in enumerate(listed):
            if not isinstance(item, dict):
                raise ConfigError(f"{where}: variants[{i}] must be a mapping")
            item = dict(item)
            label = item.pop("label", None)
            explicit.append((None if label is None else str(label), item))
    keys = list(grid)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*grid.values())]
    out: list[Variant] = []
    for (vlabel, vover), point in itertools.product(explicit, points):
        parts = [vlabel or (label_of(vover) if vover else ""), label_of(point) if point else ""]
        label = " ".join(p for p in parts if p) or "base"
        out.append(Variant(label=label, slug=slugify(label), overrides={**vover, **point}))
    labels = [v.label for v in out]
    dup = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dup:
        raise ConfigError(f"{where}: variant label(s) {dup} appear more than once")
    slugs = [v.slug for v in out]
    if len(set(slugs)) != len(slugs):
        raise ConfigError(f"{where}: variant labels {labels} map to clashing folder names")
    return out


def _int_list(value: Any, what: str, where: str) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    try:
        out = [int(v) for v in value]
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {what} must be a list of integers, got {value!r}") from None
    if not out:
        raise ConfigError(f"{where}: {what} is empty")
    return out


def parse_folds(value: Any, where: str = "folds") -> list[int] | str:
    """``"all"`` or a list of fold numbers (``[0, 1]``, ``"0,1"``, ``0``)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "all"):
        return "all"
    return _int_list(value, "folds", where)


def parse_seeds(value: Any, where: str = "seeds") -> list[int]:
    """A list of seeds (``[0, 1]``, ``"0,1"``, ``0``)."""
    return _int_list([0] if value is None else value, "seeds", where)


def experiment_from_dict(data: dict[str, Any], path: Path | None = None) -> Experiment:
    """Validate and parse an experiment mapping (``path``: where relative paths start)."""
    where = str(path) if path else "experiment"
    unknown = sorted(set(data) - set(EXPERIMENT_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(EXPERIMENT_KEYS)}"
        )
    base: dict[str, Any] = {}
    if data.get("base_file"):
        root = path.parent if path else Path.cwd()
        base = load_yaml_with_base((root / str(data["base_file"])).resolve())
    inline = data.get("base") or {}
    if not isinstance(inline, dict):
        raise ConfigError(f"{where}: 'base' must be a mapping of config sections")
    base = deep_merge(base, dotted_to_nested(inline) if any("." in k for k in inline) else inline)
    try:
        Config.from_dict(base)
    except ConfigError as e:
        raise ConfigError(f"{where}: base: {e}") from None
    compare = data.get("compare") or {}
    if not isinstance(compare, dict) or set(compare) - set(COMPARE_KEYS):
        raise ConfigError(f"{where}: 'compare' accepts only {', '.join(COMPARE_KEYS)}")
    figures_by = compare.get("figures_by") or []
    if isinstance(figures_by, str):
        figures_by = [figures_by]
    exp = Experiment(
        name=str(data.get("name") or (path.stem if path else "sweep")),
        description=str(data.get("description") or "").strip(),
        base=base,
        variants=_variants(data, where),
        seeds=parse_seeds(data.get("seeds"), f"{where}: seeds"),
        folds=parse_folds(data.get("folds", [0]), f"{where}: folds"),
        figures_by=[str(k) for k in figures_by],
        title=compare.get("title"),
        reference=_reference(compare.get("reference"), where),
        epoch=_epoch_rule(compare.get("epoch", "best"), where),
        path=path,
    )
    grid_keys = {k for v in exp.variants for k in v.overrides}
    bad = [k for k in exp.figures_by if k not in grid_keys]
    if bad:
        raise ConfigError(f"{where}: compare.figures_by {bad} must be keys the variants set")
    bad = [k for k in exp.reference if k not in grid_keys]
    if bad:
        raise ConfigError(f"{where}: compare.reference {bad} must be keys the variants set")
    return exp


def _epoch_rule(value: Any, where: str) -> str:
    if value not in ("best", "last"):
        raise ConfigError(
            f"{where}: compare.epoch={value!r}: use 'best' (highest val/rec_f1_macro) or 'last'"
        )
    return str(value)


def _reference(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not value:
        raise ConfigError(
            f"{where}: compare.reference must map dotted keys to values, e.g. "
            "{preprocessing.encoding.kind: stacked}"
        )
    return {str(k): v for k, v in value.items()}


def load_experiment(path: str | Path) -> Experiment:
    """Read an experiment YAML file (safe loader)."""
    p = Path(path)
    return experiment_from_dict(load_yaml(p), p.resolve())


# ----------------------------------------------------------------------------- planning


def _resolve_data_path(value: str, exp: Experiment) -> str:
    """Absolute data path: as given, else relative to the current folder, else to the repo."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    candidates = [Path.cwd() / p]
    if exp.path is not None:
        candidates += [exp.path.parent / p, exp.path.parent.parent / p]
    for c in candidates:
        if c.exists():
            return str(c.resolve())
    return str(candidates[0].resolve())


def _matches(value: Any, wanted: Any) -> bool:
    """``--only`` matching: equal, or one of a list."""
    if isinstance(wanted, list):
        return any(_matches(value, w) for w in wanted)
    return value == wanted or (isinstance(wanted, str) and format_value(value) == wanted)


def plan_runs(
    exp: Experiment,
    out_dir: str | Path,
    data: str | None = None,
    epochs: int | None = None,
    folds: Sequence[int] | str | None = None,
    seeds: Sequence[int] | None = None,
    overrides: Sequence[str] = (),
    progress: bool = True,
    only: Sequence[str] = (),
) -> list[RunSpec]:
    """Every (variant, fold, seed) run with its resolved :class:`Config` (nothing is run).

    Command-line values win over the file: ``data`` (data.path), ``epochs``, ``folds``,
    ``seeds`` and ``overrides`` (``key=value`` strings, applied to every run last).
    ``only`` (``key=value`` strings) keeps the variants whose resolved config has all
    those values (a YAML list value: any of them; the key ``variant`` matches the variant
    label), to run part of a comparison now and the rest later in the same folder.
    """
    out = Path(out_dir)
    where = str(exp.path) if exp.path else exp.name
    late: dict[str, Any] = dotted_to_nested(list(overrides))
    if data is not None:
        late = deep_merge(late, {"data": {"path": data}})
    if epochs is not None:
        late = deep_merge(late, {"trainer": {"epochs": int(epochs)}})
    fold_spec = exp.folds if folds is None else folds
    seed_list = list(exp.seeds if seeds is None else seeds)
    wanted = flat_keys(dotted_to_nested(list(only)))
    runs: list[RunSpec] = []
    seen: dict[str, set[str]] = {k: set() for k in wanted}
    for v in exp.variants:
        try:
            cfg = Config.from_dict(exp.base).override(v.overrides).override(late)
        except ConfigError as e:
            raise ConfigError(f"{where}: variant {v.label!r}: {e}") from None
        flat = {**flat_keys(cfg.to_dict()), "variant": v.label}
        for k in wanted:
            if k not in flat:
                raise ConfigError(f"--only {k}: not a config key (nor 'variant')")
            seen[k].add(format_value(flat[k]))
        if not all(_matches(flat[k], val) for k, val in wanted.items()):
            continue
        cfg = cfg.override(
            {
                "data.path": _resolve_data_path(cfg.data.path, exp),
                "trainer.progress": progress,
            }
        )
        if cfg.augment.noise_dir:  # found like data.path (the experiment files are relative)
            noise = _resolve_data_path(cfg.augment.noise_dir, exp)
            cfg = cfg.override({"augment.noise_dir": noise})
        fold_list = list(range(cfg.data.n_folds)) if fold_spec == "all" else list(fold_spec)
        for k in fold_list:
            if not 0 <= k < cfg.data.n_folds:
                raise ConfigError(
                    f"fold {k} does not exist: data.n_folds={cfg.data.n_folds} "
                    f"(folds 0..{cfg.data.n_folds - 1})"
                )
        for k, s in itertools.product(fold_list, seed_list):
            name = f"{v.slug}__fold{k}__seed{s}"
            run_cfg = cfg.override(
                {"data.val_fold": k, "trainer.seed": s, "out_dir": str(out / "runs" / name)}
            )
            runs.append(RunSpec(name=name, variant=v, fold=k, seed=s, config=run_cfg))
    if wanted and not runs:
        have = "; ".join(f"{k} takes {', '.join(sorted(vals))}" for k, vals in seen.items())
        raise ConfigError(f"--only {' '.join(only)} matches no variant of {where} ({have})")
    return runs


def config_differences(run: RunSpec) -> list[str]:
    """Keys where the config saved in a run folder differs from the planned one."""
    from birdstack.training.train import VOLATILE_KEYS, saved_config_differences

    return saved_config_differences(run.run_dir, run.config, VOLATILE_KEYS)


def check_existing(runs: Sequence[RunSpec]) -> None:
    """Refuse to mix results: a run folder that holds another config is an error."""
    for run in runs:
        if run.status() not in ("done", "resume"):
            continue
        diffs = config_differences(run)
        if diffs:
            raise ConfigError(
                f"{run.run_dir} holds a run made with another configuration "
                f"({'; '.join(diffs[:4])}); use another --out folder or delete that run folder"
            )


# ----------------------------------------------------------------------------- running


def print_plan(runs: Sequence[RunSpec], console: Console) -> None:
    """A table of the planned runs and their state."""
    where = runs[0].run_dir.parent if runs else Path("runs")
    table = Table(title=f"{len(runs)} run(s) in {where}/<variant>__fold<k>__seed<s>")
    for col in ("#", "variant", "fold", "seed", "epochs", "state"):
        table.add_column(col, justify="left" if col == "variant" else "right", no_wrap=True)
    for i, r in enumerate(runs, 1):
        table.add_row(
            str(i),
            r.variant.label,
            str(r.fold),
            str(r.seed),
            str(r.config.trainer.epochs),
            r.status(),
        )
    console.print(table)


def execute_run(
    run: RunSpec, console: Console, skipped: list[tuple[str, str]] | None = None
) -> str:
    """Train one run (resuming if it can); returns ``done``, ``skipped`` or ``failed``.

    Input files the run skipped as unreadable are appended to ``skipped``.
    """
    from birdstack.training.train import train

    state = run.status()
    if state == "done":
        return "skipped"
    d = run.run_dir
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        d / RUN_FILE,
        {
            "variant": run.variant.label,
            "overrides": run.variant.overrides,
            "fold": run.fold,
            "seed": run.seed,
        },
    )
    err = d / "error.txt"
    try:
        result = train(run.config, resume=state == "resume")
        if skipped is not None:
            skipped.extend(result.skipped)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # one failing run must not stop the others
        atomic_write_text(err, "".join(traceback.format_exception(e)))
        console.print(f"[red]run {run.name} failed:[/red] {type(e).__name__}: {e} (see {err})")
        return "failed"
    if err.exists():
        err.unlink()
    return "done"


def run_sweep(
    experiment: str | Path | Experiment,
    out_dir: str | Path | None = None,
    *,
    data: str | None = None,
    epochs: int | None = None,
    folds: Sequence[int] | str | None = None,
    seeds: Sequence[int] | None = None,
    overrides: Sequence[str] = (),
    dry_run: bool = False,
    progress: bool = True,
    evaluate_best: bool = True,
    only: Sequence[str] = (),
    command: str | None = None,
    console: Console | None = None,
) -> SweepResult:
    """Run (or resume) every run of an experiment, then write tables, figures and report.md.

    ``out_dir`` defaults to ``outputs/sweeps/<name>``. With ``dry_run`` only the plan is
    printed. ``evaluate_best``: evaluate the best run's best checkpoint on its validation
    split (confusion matrix in the report). ``only``: run and report just the variants
    whose config has these ``key=value`` settings (see :func:`plan_runs`).
    """
    from birdstack.sweeps import report

    console = console or Console()
    exp = experiment if isinstance(experiment, Experiment) else load_experiment(experiment)
    out = Path(out_dir) if out_dir is not None else Path("outputs") / "sweeps" / exp.name
    runs = plan_runs(exp, out, data, epochs, folds, seeds, overrides, progress, only)
    check_existing(runs)
    from birdstack.training.train import validate_config

    for run in runs:  # configuration errors of any run stop the sweep before the first one
        validate_config(run.config)
    console.print(f"[bold]sweep {exp.name}[/bold] -> {out}")
    print_plan(runs, console)
    if dry_run:
        return SweepResult(out, runs, pd.DataFrame(), pd.DataFrame(), None, [], 0.0)

    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out)  # left by a sweep killed while writing
    atomic_write_json(
        out / "sweep.json",
        {
            "name": exp.name,
            "description": exp.description,
            "experiment_file": str(exp.path) if exp.path else None,
            "command": command,
            "runs": [
                {"name": r.name, "variant": r.variant.label, "fold": r.fold, "seed": r.seed}
                for r in runs
            ],
        },
    )
    atomic_write_text(
        out / "experiment.yaml",
        yaml.safe_dump(
            {
                "name": exp.name,
                "description": exp.description,
                "base": exp.base,
                "variants": [{"label": v.label, **v.overrides} for v in exp.variants],
                "seeds": list(exp.seeds),
                "folds": exp.folds,
            },
            sort_keys=False,
        ),
    )
    start = time.perf_counter()
    states: dict[str, str] = {}
    skipped: list[tuple[str, str]] = []
    for i, run in enumerate(runs, 1):
        state = run.status()
        verb = {"done": "skip (finished)", "resume": "resume", "failed": "retry"}.get(state, "run")
        console.rule(f"[{i}/{len(runs)}] {run.name}: {verb}")
        states[run.name] = execute_run(run, console, skipped)
    wall = time.perf_counter() - start

    rep = report.write_sweep_report(
        exp,
        runs,
        out,
        command=command,
        sweep_wall_s=wall,
        evaluate_best=evaluate_best,
        console=console,
        progress=progress,
        trained=sum(state == "done" for state in states.values()),
        failed_now=sum(state == "failed" for state in states.values()),
    )
    status = rep.per_run.set_index("run")["status"]
    failed = [r.name for r in runs if status[r.name] != "done"]
    return SweepResult(
        out, runs, rep.per_run, rep.table, rep.report, failed, wall, sorted(set(skipped))
    )


def sweep_command() -> str:
    """The command line as typed (for the report)."""
    return shlex.join(["birdstack", *sys.argv[1:]])
