"""Sweeps: experiment files, the results table against a hand computation, a real tiny sweep,
and a sweep killed with SIGKILL that resumes to the same table."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from birdstack.config import ConfigError
from birdstack.sweeps.report import (
    SEGMENT_METRICS,
    STACKED_METRICS,
    aggregate_runs,
    choose_metrics,
    group_references,
    paired_differences,
    read_run_metrics,
)
from birdstack.sweeps.sweep import experiment_from_dict, load_experiment, plan_runs

pytestmark = pytest.mark.xdist_group("sweep")

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "sweep_runs"
METRIC_COLUMNS = ["acc", "f1_macro", "loss", "best_epoch", "n_params"]


# ----------------------------------------------------------------------------- file format


def test_every_shipped_experiment_file_parses_and_plans():
    expected = {
        "study_optimizers": (10, 50),
        "study_pretraining": (2, 10),
        "study_pretraining_lite": (2, 10),
        "study_models": (3, 15),
        "encoding_stacked_vs_segments": (4, 20),
        "encoding_segments_all_windows": (2, 10),
        "precise_bn": (2, 10),
        "smoke": (2, 4),
        "all_species": (1, 5),
    }
    for name, (n_variants, n_runs) in expected.items():
        exp = load_experiment(REPO / "experiments" / f"{name}.yaml")
        runs = plan_runs(exp, "/tmp/unused")
        assert (len(exp.variants), len(runs)) == (n_variants, n_runs), name
        assert all(Path(r.config.data.path).is_absolute() for r in runs)
    opt = load_experiment(REPO / "experiments" / "study_optimizers.yaml")
    labels = [v.label for v in opt.variants]
    assert labels[:2] == ["optim=adam lr=0.01", "optim=adam lr=0.0001"]
    run = plan_runs(opt, "/tmp/out", folds=[3], seeds=[7])[0]
    assert run.name == "optim-adam_lr-0.01__fold3__seed7"
    assert run.config.optim.name == "adam" and run.config.optim.lr == 0.01
    assert (run.config.data.val_fold, run.config.trainer.seed) == (3, 7)
    assert run.config.out_dir == "/tmp/out/runs/optim-adam_lr-0.01__fold3__seed7"


def test_command_line_values_win_and_bad_files_are_refused(tmp_path):
    exp = experiment_from_dict(
        {
            "name": "x",
            "base": {"trainer": {"epochs": 20}},
            "variants": [{"label": "small", "trainer.batch_size": 4}, {"label": "big"}],
            "grid": {"optim.lr": [0.1, 0.01]},
            "folds": "all",
        }
    )
    assert [v.label for v in exp.variants] == [
        "small lr=0.1",
        "small lr=0.01",
        "big lr=0.1",
        "big lr=0.01",
    ]
    runs = plan_runs(
        exp, tmp_path, data=str(tmp_path), epochs=2, overrides=["trainer.batch_size=2"]
    )
    assert len(runs) == 4 * 5  # 5 folds by default
    assert {r.config.trainer.epochs for r in runs} == {2}
    assert {r.config.trainer.batch_size for r in runs} == {2}  # --set applies last
    assert {r.config.data.path for r in runs} == {str(tmp_path)}
    with pytest.raises(ConfigError, match="unknown key.*gird"):
        experiment_from_dict({"gird": {"optim.lr": [1]}})
    with pytest.raises(ConfigError, match="optim.lrr"):
        plan_runs(experiment_from_dict({"grid": {"optim.lrr": [1]}}), tmp_path)
    with pytest.raises(ConfigError, match="fold 7 does not exist"):
        plan_runs(exp, tmp_path, folds=[7])
    # --only: part of a comparison now, the rest later
    only = plan_runs(exp, tmp_path, only=["trainer.batch_size=4", "optim.lr=0.01"])
    assert [r.name for r in only] == [f"small_lr-0.01__fold{k}__seed0" for k in range(5)]
    with pytest.raises(ConfigError, match="matches no variant.*trainer.batch_size takes 16, 4"):
        plan_runs(exp, tmp_path, only=["trainer.batch_size=8"])
    by_label = plan_runs(exp, tmp_path, only=["variant=[small lr=0.1, big lr=0.01]"], folds=[0])
    assert [r.variant.label for r in by_label] == ["small lr=0.1", "big lr=0.01"]
    with pytest.raises(ConfigError, match="--only optim.lrr: not a config key"):
        plan_runs(exp, tmp_path, only=["optim.lrr=1"])


# ----------------------------------------------------------------------------- table maths


def test_last_epoch_rule_reads_the_final_row():
    last = choose_metrics(["stacked"], epoch="last")
    assert (last.acc, last.epoch) == ("val/acc", "last") and "last epoch" in last.describe()
    row = read_run_metrics(FIXTURE / "a__fold0__seed0", last.acc, last.f1, last.loss, "last")
    # fold 0's best epoch (highest val/rec_f1_macro 0.45) is the 2nd; its last row is epoch 3
    assert row["best_epoch"] == 2
    assert (row["acc"], row["f1_macro"], row["loss"]) == pytest.approx((0.5, 0.45, 1.3))
    with pytest.raises(ConfigError, match="compare.epoch"):
        experiment_from_dict({"grid": {"optim.lr": [1]}, "compare": {"epoch": "final"}})
    assert experiment_from_dict({"compare": {"epoch": "last"}}).epoch == "last"


def test_a_single_label_run_in_a_multilabel_sweep_reports_its_accuracy_as_top1():
    ml = choose_metrics(["pooled"], epoch="last", multilabel=True)
    row = read_run_metrics(FIXTURE / "a__fold0__seed0", ml.acc, ml.f1, ml.loss, "last")
    last = pd.read_csv(FIXTURE / "a__fold0__seed0" / "metrics.csv").iloc[-1]
    assert row["acc"] == pytest.approx(float(last["val/rec_acc"]))
    assert math.isnan(row["f1_macro"])  # no cmAP for a softmax run: left empty, not made up


def test_best_epoch_is_the_training_rule_even_for_runs_of_an_older_rule(tmp_path, caplog):
    run = tmp_path / "r__fold0__seed0"
    shutil.copytree(FIXTURE / "a__fold0__seed0", run)
    # val/loss lowest at epoch 0; val/rec_f1_macro ties at epochs 1 and 2: the later wins
    hist = pd.read_csv(run / "metrics.csv")
    hist["val/loss"] = [0.5, 1.2, 1.3]
    hist["val/rec_f1_macro"] = [0.2, 0.45, 0.45]
    hist.to_csv(run / "metrics.csv", index=False)
    with caplog.at_level("WARNING", logger="birdstack"):
        row = read_run_metrics(run, "val/rec_acc", "val/rec_f1_macro")
    assert row["best_epoch"] == 3 and row["acc"] == pytest.approx(0.5)
    # result.json (an older rule's) names epoch 2: the row says so, best.ckpt does not match
    assert "best.ckpt holds epoch 2" in caplog.text and "the tables use epoch 3" in caplog.text
    caplog.clear()
    res = json.loads((run / "result.json").read_text())
    (run / "result.json").write_text(json.dumps({**res, "best_epoch": 2}))
    with caplog.at_level("WARNING", logger="birdstack"):
        assert read_run_metrics(run, "val/rec_acc", "val/rec_f1_macro")["best_epoch"] == 3
        assert read_run_metrics(run, epoch="last")["best_epoch"] == 3
    assert caplog.text == ""
    assert "highest `val/rec_f1_macro`" in STACKED_METRICS.describe()


def test_paired_differences_match_a_hand_computation():
    folds = [0, 1, 2]
    per_run = pd.DataFrame(
        {
            "variant": ["ref"] * 3 + ["alt"] * 3 + ["big"] * 3,
            "fold": folds * 3,
            "seed": 0,
            "status": ["done"] * 8 + ["failed"],
            "acc": [0.5, 0.6, 0.7, 0.6, 0.8, 1.0, 0.9, 0.9, math.nan],
            "f1_macro": [0.4, 0.5, 0.6, 0.5, 0.7, 0.9, 0.9, 1.0, math.nan],
            "loss": [1.0, 1.0, 1.0, 0.9, 0.8, 0.7, 0.5, 0.5, math.nan],
        }
    )
    exp = experiment_from_dict(
        {
            "variants": [{"label": "alt", "optim.lr": 0.1}, {"label": "ref", "optim.lr": 0.01}]
            + [{"label": "big", "optim.lr": 1.0}],
            "compare": {"reference": {"optim.lr": 0.01}},
        }
    )
    refs = group_references(exp)
    assert refs == {"curves": "ref"}  # compare.reference, not the first variant
    d = paired_differences(per_run, {"curves": ["alt", "ref", "big"]}, refs)
    d = d.set_index("variant")
    alt, big = d.loc["alt"], d.loc["big"]
    # alt - ref on folds 0..2: F1 differences 0.1, 0.2, 0.3
    t975 = 4.302652729911275  # Student t, 2 degrees of freedom
    half = t975 * 0.1 / math.sqrt(3)
    assert alt["n_pairs"] == 3
    assert alt["f1_macro_diff"] == pytest.approx(0.2)
    assert alt["f1_macro_diff_std"] == pytest.approx(0.1)
    assert (alt["f1_macro_ci_low"], alt["f1_macro_ci_high"]) == pytest.approx(
        (0.2 - half, 0.2 + half)
    )
    t_stat = 0.2 / (0.1 / math.sqrt(3))
    assert t_stat == pytest.approx(3.4641016)
    assert alt["f1_macro_p"] == pytest.approx(0.07417990, abs=1e-6)
    assert alt["loss_diff"] == pytest.approx(-0.2)
    assert (alt["f1_wins"], alt["f1_losses"], alt["verdict"]) == (3, 0, "within spread")
    # big: only folds 0 and 1 finished; +0.5 F1 on both
    assert big["n_pairs"] == 2 and big["f1_macro_diff"] == pytest.approx(0.5)
    assert big["verdict"] == "better" and big["f1_macro_p"] == 0.0
    with pytest.raises(ConfigError, match="compare.reference"):
        experiment_from_dict({"grid": {"optim.lr": [1]}, "compare": {"reference": "x"}})
    with pytest.raises(ConfigError, match="compare.reference.*must be keys"):
        experiment_from_dict({"grid": {"optim.lr": [1]}, "compare": {"reference": {"a.b": 1}}})


def _fixture_rows(metric):
    rows = []
    for d in sorted(FIXTURE.iterdir()):
        if d.is_dir():
            row = read_run_metrics(d, metric.acc, metric.f1, metric.loss)
            row["variant"] = d.name.split("__")[0]
            rows.append(row)
    return pd.DataFrame(rows)


def test_table_mean_and_std_match_a_hand_computation():
    per_run = _fixture_rows(STACKED_METRICS)
    assert per_run.set_index("run")["status"].to_dict() == {
        "a__fold0__seed0": "done",
        "a__fold1__seed0": "done",
        "b__fold0__seed0": "done",
        "b__fold1__seed0": "failed",
    }
    t = aggregate_runs(per_run).set_index("variant")
    a, b = t.loc["a"], t.loc["b"]
    # variant a: best epochs (highest val/rec_f1_macro) are 2 and 3 (1-based); figures at
    # those epochs
    assert a["acc_mean"] == pytest.approx((0.5 + 0.75) / 2)
    assert a["acc_std"] == pytest.approx(abs(0.75 - 0.5) / math.sqrt(2))
    assert a["f1_macro_mean"] == pytest.approx((0.4 + 0.7) / 2)
    assert a["f1_macro_std"] == pytest.approx(abs(0.7 - 0.4) / math.sqrt(2))
    assert a["loss_mean"] == pytest.approx((1.2 + 1.1) / 2)
    assert a["loss_std"] == pytest.approx(abs(1.2 - 1.1) / math.sqrt(2))
    assert a["best_epoch_mean"] == pytest.approx(2.5)
    assert a["wall_time_s_mean"] == pytest.approx(12.0)
    assert (a["n_runs"], a["n_failed"], a["n_params"]) == (2, 0, 1000)
    # variant b: one finished run (no spread), one failed
    assert b["acc_mean"] == pytest.approx(0.8) and math.isnan(b["acc_std"])
    assert (b["n_runs"], b["n_failed"]) == (1, 1)
    assert per_run.set_index("run").loc["b__fold1__seed0", "error"] == "RuntimeError: out of memory"


def test_segments_comparisons_use_recording_level_figures():
    assert choose_metrics(["stacked", "segments"]) is SEGMENT_METRICS
    assert choose_metrics(["stacked"]) is STACKED_METRICS
    t = aggregate_runs(_fixture_rows(SEGMENT_METRICS)).set_index("variant")
    assert t.loc["a", "acc_mean"] == pytest.approx((0.55 + 0.85) / 2)
    assert t.loc["a", "f1_macro_std"] == pytest.approx(abs(0.8 - 0.45) / math.sqrt(2))


# ----------------------------------------------------------------------------- real sweeps


def _sweep_cmd(out: Path, cache_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "birdstack.cli.main",
        "sweep",
        str(REPO / "experiments/smoke.yaml"),
        "--out",
        str(out),
        "--set",
        f"data.cache_dir={cache_dir}",
        "--set",
        "data.workers=1",
        "--set",
        "trainer.accelerator=cpu",
        "--no-progress",
    ]


def _env() -> dict[str, str]:
    # the same thread count in every sweep process, so their numbers can be compared exactly
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def full_sweep(tmp_path_factory, cache_dir) -> Path:
    """The smoke sweep (2 variants x 2 folds x 1 epoch), uninterrupted, through the CLI."""
    out = tmp_path_factory.mktemp("sweep") / "full"
    proc = subprocess.run(
        _sweep_cmd(out, cache_dir), capture_output=True, text=True, timeout=900, env=_env()
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_tiny_sweep_writes_table_figures_and_report(full_sweep):
    table = pd.read_csv(full_sweep / "results.csv")
    assert table["variant"].tolist() == ["lr=0.003", "lr=0.0003"]
    for col in (
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
    ):
        assert col in table, col
    assert table["n_runs"].tolist() == [2, 2]
    assert table["acc_mean"].between(0, 1).all() and (table["loss_mean"] > 0).all()
    runs = pd.read_csv(full_sweep / "runs.csv")
    assert sorted(runs["run"]) == sorted(
        f"lr-{lr}__fold{k}__seed0" for lr in ("0.003", "0.0003") for k in (0, 1)
    )
    # the table is the mean of the per-run figures read back from the run folders
    for v, sub in runs.groupby("variant"):
        row = table.set_index("variant").loc[v]
        assert row["acc_mean"] == pytest.approx(sub["acc"].mean())
        assert row["acc_std"] == pytest.approx(sub["acc"].std(ddof=1))
    for png in ("curves.png", "best_run/confusion.png"):
        assert (full_sweep / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    report = (full_sweep / "report.md").read_text()
    for needle in (
        "birdstack sweep",
        "torch ",
        "lightning ",
        "CPU",
        "torch kernels ",  # the instruction set, since CPU kernels can change the last bits
        "`val/acc`",
        "curves.png",
        "best_run/confusion.png",
        str(REPO / "data" / "birds-demo"),
    ):
        assert needle in report, needle
    assert "| lr=0.003 |" in (full_sweep / "results.md").read_text()
    # the two learning rates compared on the folds they share
    diffs = pd.read_csv(full_sweep / "differences.csv")
    assert diffs[["variant", "reference", "n_pairs"]].values.tolist() == [
        ["lr=0.0003", "lr=0.003", 2]
    ]
    by_run = runs.set_index(["variant", "fold"])["f1_macro"]
    expected = (by_run["lr=0.0003"] - by_run["lr=0.003"]).mean()
    assert diffs.loc[0, "f1_macro_diff"] == pytest.approx(expected)
    assert "## Paired differences" in report


def test_killed_sweep_resumes_to_the_same_table(full_sweep, cache_dir, tmp_path):
    out = tmp_path / "killed"
    first = out / "runs" / "lr-0.003__fold0__seed0" / "result.json"
    proc = subprocess.Popen(
        _sweep_cmd(out, cache_dir) + ["--no-eval"],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 600
        while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert first.exists(), "the first run never finished"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    stamp = first.stat().st_mtime_ns
    assert not (out / "results.csv").exists()
    again = subprocess.run(
        _sweep_cmd(out, cache_dir), capture_output=True, text=True, timeout=900, env=_env()
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "skip (finished)" in again.stdout
    assert first.stat().st_mtime_ns == stamp  # the finished run was not trained again
    assert "(3 run(s) trained, 1 already finished)" in (out / "report.md").read_text()
    resumed = pd.read_csv(out / "runs.csv").set_index("run").sort_index()
    full = pd.read_csv(full_sweep / "runs.csv").set_index("run").sort_index()
    assert (resumed["status"] == "done").all() and len(resumed) == 4
    pd.testing.assert_frame_equal(resumed[METRIC_COLUMNS], full[METRIC_COLUMNS])
    cols = [c for c in pd.read_csv(out / "results.csv").columns if not c.startswith("wall")]
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "results.csv")[cols], pd.read_csv(full_sweep / "results.csv")[cols]
    )


def test_a_failing_run_is_reported_and_the_others_go_on(tmp_path, cache_dir, demo_dir):
    from birdstack.sweeps.sweep import run_sweep

    exp = experiment_from_dict(
        {
            "name": "failing",
            "base": {
                "data": {"path": str(demo_dir), "cache_dir": str(cache_dir), "workers": 1},
                "preprocessing": {"encoding": {"kind": "stacked", "short": "pad"}},
                "trainer": {"epochs": 1, "batch_size": 8, "accelerator": "cpu"},
            },
            # mobilenet_compact has no pretrained weights: fails when the model is built
            "variants": [
                {"label": "broken", "model.weights": str(tmp_path / "missing.pth")},
                {"label": "fine"},
            ],
            "folds": [0],
        }
    )
    res = run_sweep(exp, tmp_path / "out", progress=False, evaluate_best=False)
    assert res.failed == ["broken__fold0__seed0"]
    err = tmp_path / "out" / "runs" / "broken__fold0__seed0" / "error.txt"
    assert "ModelConfigError" in err.read_text()
    table = res.table.set_index("variant")
    assert (table.loc["fine", "n_runs"], table.loc["broken", "n_failed"]) == (1, 1)
    assert "broken__fold0__seed0" in (tmp_path / "out" / "report.md").read_text()
    # a second start with other settings for the same folders is refused, not mixed
    with pytest.raises(ConfigError, match="another configuration.*trainer.epochs"):
        run_sweep(exp, tmp_path / "out", epochs=2, progress=False, dry_run=True)
    shutil.rmtree(tmp_path / "out")


def test_stacked_and_segments_variants_share_the_same_folds(cache_dir):
    from rich.console import Console

    from birdstack.data.prepare import prepare

    folds = {}
    for name in ("encoding_stacked_vs_segments", "encoding_segments_all_windows"):
        exp = load_experiment(REPO / "experiments" / f"{name}.yaml")
        runs = plan_runs(exp, "/tmp/unused", folds=[0], overrides=[f"data.cache_dir={cache_dir}"])
        for run in runs:
            if run.config.model.name != "mobilenet_compact":
                continue
            cfg = run.config
            kept = prepare(
                cfg.data, cfg.preprocessing, None, progress=False, console=Console(quiet=True)
            ).kept
            folds[f"{name}: {run.variant.label}"] = dict(zip(kept["rec_id"], kept["fold"]))
    assert len(folds) == 4  # stacked twice, segments on random crops, segments on all windows
    first = next(iter(folds.values()))
    assert all(f == first for f in folds.values()) and len(first) >= 30


def test_runs_that_failed_alike_are_reported_on_one_line():
    from birdstack.sweeps.report import unfinished_lines

    failed = pd.DataFrame(
        {
            "run": ["imagenet__fold0__seed0", "imagenet__fold1__seed0", "x__fold0__seed0"],
            "status": ["failed", "failed", "unfinished"],
            "error": ["BirdstackError: no weights", "BirdstackError: no weights", ""],
        }
    )
    lines = unfinished_lines(failed)
    assert len(lines) == 2
    assert lines[0].startswith("- failed (2 runs: `imagenet__fold0__seed0`, `imagenet__fold1")
    assert lines[0].count("no weights") == 1 and "error.txt" in lines[0]
    assert lines[1] == "- unfinished (`x__fold0__seed0`)"


def test_a_run_saved_with_the_resolved_encoding_matches_its_auto_plan(tmp_path):
    """train() saves encoding.kind resolved; the plan says "auto": the same run, resumable."""
    import yaml

    from birdstack.sweeps.sweep import config_differences
    from birdstack.training.train import resolve_config

    plan = {"name": "auto", "base": {"data": {"path": str(tmp_path)}}, "folds": [0]}
    exp = experiment_from_dict(plan, tmp_path / "auto.yaml")
    (run,) = plan_runs(exp, str(tmp_path / "sweep"))
    assert run.config.preprocessing.encoding.kind == "auto"
    run.run_dir.mkdir(parents=True)
    saved = resolve_config(run.config).to_dict()
    assert saved["preprocessing"]["encoding"]["kind"] == "segments"
    (run.run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    assert config_differences(run) == []
    # a real difference is still one
    saved["preprocessing"]["encoding"]["kind"] = "stacked"
    (run.run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    assert config_differences(run) == ["preprocessing.encoding.kind: 'stacked' -> 'segments'"]


def test_speed_only_settings_do_not_make_another_run(tmp_path):
    """A run saved before a speed-only default changed (BirdNET's windows per call) resumes."""
    import yaml

    from birdstack.sweeps.sweep import config_differences
    from birdstack.training.train import resolve_config

    plan = {"name": "old", "base": {"data": {"path": str(tmp_path)}}, "folds": [0]}
    (run,) = plan_runs(experiment_from_dict(plan, tmp_path / "old.yaml"), str(tmp_path / "s"))
    run.run_dir.mkdir(parents=True)
    saved = resolve_config(run.config).to_dict()
    saved["preprocessing"]["birdnet"].update(batch_size=32, threads=2)
    (run.run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    assert config_differences(run) == []
    saved["preprocessing"]["birdnet"]["hop_s"] = 1.5  # changes the features: another run
    (run.run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    assert config_differences(run) == ["preprocessing.birdnet.hop_s: 1.5 -> 3.0"]
