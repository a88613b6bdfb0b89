"""Evaluation of real (tiny) checkpoints on the embedded demo data, and the metric helpers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from birdstack.config import Config
from birdstack.evaluation.evaluate import evaluate_checkpoint
from birdstack.evaluation.metrics import classification_metrics
from birdstack.training.train import train
from birdstack.utils import BadInputError

pytestmark = pytest.mark.xdist_group("evaluate")

# Longer than every demo recording (30 s = 1876 frames): each recording is one padded
# input, exactly as in training, so evaluation must reproduce the training log.
WHOLE = 1880


def _train(out: Path, demo_dir: Path, cache_dir: Path, **over) -> Path:
    cfg = Config.from_dict(
        {
            "data": {"path": str(demo_dir), "cache_dir": str(cache_dir), "workers": 1},
            "task": {"kind": "multiclass"},  # the single-label task under test
            "preprocessing": {"encoding": {"kind": "stacked", "short": "pad"}},
            "trainer": {"epochs": 1, "batch_size": 8, "progress": False, "accelerator": "cpu"},
            "out_dir": str(out),
        }
    ).override(over)
    return train(cfg).run_dir


@pytest.fixture(scope="module")
def stacked_run(tmp_path_factory, demo_dir, cache_dir) -> Path:
    """A 1-epoch stacked run on 4 of the 6 demo species."""
    out = tmp_path_factory.mktemp("eval") / "stacked"
    return _train(
        out,
        demo_dir,
        cache_dir,
        **{
            "data.top_k": 4,
            "preprocessing.encoding.target_frames": WHOLE,
        },
    )


def test_evaluate_validation_split_reproduces_the_training_log(
    stacked_run, demo_dir, cache_dir, tmp_path
):
    out = tmp_path / "eval"
    res = evaluate_checkpoint(
        stacked_run / "checkpoints" / "best.ckpt",
        demo_dir,
        manifest=stacked_run / "data" / "manifest.csv",
        split="val",
        out_dir=out,
        cache_dir=cache_dir,
        progress=False,
    )
    manifest = pd.read_csv(stacked_run / "data" / "manifest.csv")
    val = manifest[(manifest["split"] == "val") & ~manifest["dropped"]]
    assert sorted(res.predictions["rec_id"]) == sorted(val["rec_id"])
    logged = json.loads((stacked_run / "result.json").read_text())["best"]
    assert res.recording.accuracy == pytest.approx(logged["val/acc"], abs=1e-6)
    assert res.recording.f1_macro == pytest.approx(logged["val/f1_macro"], abs=1e-5)
    assert res.recording.log_loss == pytest.approx(logged["val/loss"], rel=1e-4)

    metrics = json.loads((out / "metrics.json").read_text())
    rec = metrics["recording"]
    for key in (
        "accuracy",
        "f1_macro",
        "precision_macro",
        "recall_macro",
        "log_loss",
        "n",
        "per_class",
        "confusion_matrix",
    ):
        assert key in rec, key
    assert set(rec["per_class"]) == set(res.classes) and len(res.classes) == 4
    assert sum(c["support"] for c in rec["per_class"].values()) == len(val)
    assert metrics["window"] is None  # stacked model
    conf = pd.read_csv(out / "confusion.csv", index_col=0)
    assert list(conf.columns) == res.classes and int(conf.to_numpy().sum()) == len(val)
    assert np.trace(conf.to_numpy()) == round(res.recording.accuracy * len(val))
    assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    preds = pd.read_csv(out / "predictions.csv")
    assert {"file", "true", "predicted", "confidence"} <= set(preds.columns)
    p = preds[[f"p_{c}" for c in res.classes]].to_numpy()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(preds["confidence"], p.max(axis=1))


def test_other_species_and_training_recordings_are_left_out_and_counted(
    stacked_run, demo_dir, cache_dir, tmp_path, capsys
):
    from birdstack.cli.main import build_parser

    manifest = pd.read_csv(stacked_run / "data" / "manifest.csv")
    n_train = int(((manifest["split"] == "train") & ~manifest["dropped"].astype(bool)).sum())
    assert 0 < n_train < 32
    ckpt = str(stacked_run / "checkpoints" / "best.ckpt")
    base = ["evaluate", ckpt, "--data", str(demo_dir), "--cache-dir", str(cache_dir)]
    args = build_parser().parse_args([*base, "--out", str(tmp_path / "all"), "--no-progress"])
    assert args.func(args) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "16 recording(s) left out: primary label not among the checkpoint's classes" in out
    assert f"{n_train} recording(s) left out: the checkpoint's run trained on them" in out
    metrics = json.loads((tmp_path / "all" / "metrics.json").read_text())
    assert metrics["excluded"]["label_not_in_checkpoint"] == 16
    assert metrics["excluded"]["used_in_training"] == n_train
    assert metrics["n_recordings"] == 48 - 16 - n_train
    scored = set(pd.read_csv(tmp_path / "all" / "predictions.csv")["rec_id"].astype(str))
    trained = manifest.loc[manifest["split"] == "train", "rec_id"].astype(str)
    assert not scored & set(trained)
    # recordings kept, but those of a training session (author | date) are counted, warned
    from birdstack.data.metadata import load_metadata
    from birdstack.data.split import session_ids

    meta = load_metadata(demo_dir)
    sessions = session_ids(meta[meta["rec_id"].astype(str).isin(scored)])
    train_sessions = set(manifest.loc[manifest["split"] == "train", "session"].astype(str))
    same = int(sessions.isin({t for t in train_sessions if " | " in t}).sum())
    assert metrics["shares_training_session"] == same
    assert (f"{same} of the {len(scored)} recording(s) come from a recording session" in out) == (
        same > 0
    )
    # opted in: scored, with a warning
    args = build_parser().parse_args(
        [*base, "--out", str(tmp_path / "inc"), "--no-progress", "--include-trained"]
    )
    assert args.func(args) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"{n_train} of the 32 recording(s) trained this checkpoint" in out
    assert json.loads((tmp_path / "inc" / "metrics.json").read_text())["n_recordings"] == 32
    with pytest.raises(BadInputError, match="--split needs --manifest"):
        evaluate_checkpoint(ckpt, demo_dir, split="val", cache_dir=cache_dir, progress=False)


def test_evaluating_only_training_recordings_is_refused(stacked_run, demo_dir, cache_dir, tmp_path):
    # a copy of the training recordings in another folder, with their metadata: caught by
    # content, and every one of them counted as a recording of a training session
    import shutil

    manifest = pd.read_csv(stacked_run / "data" / "manifest.csv", dtype={"rec_id": str})
    trained = manifest[(manifest["split"] == "train") & ~manifest["dropped"].astype(bool)]
    meta = pd.read_csv(demo_dir / "train_metadata.csv")
    meta = meta[meta["filename"].str.replace(r"\.\w+$", "", regex=True).isin(trained["rec_id"])]
    assert len(meta) == len(trained)
    copy = tmp_path / "copy"
    for name in meta["filename"]:
        (copy / "train_audio" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(demo_dir / "train_audio" / name, copy / "train_audio" / name)
    meta.to_csv(copy / "train_metadata.csv", index=False)
    ckpt = stacked_run / "checkpoints" / "best.ckpt"
    with pytest.raises(BadInputError, match=f"all {len(trained)} selected recordings"):
        evaluate_checkpoint(ckpt, copy, cache_dir=cache_dir, progress=False)
    res = evaluate_checkpoint(ckpt, copy, cache_dir=cache_dir, progress=False, include_trained=True)
    assert res.recording.n == len(trained)
    assert res.same_session == len(trained)  # every demo recording has an author and a date
    assert res.to_dict()["shares_training_session"] == len(trained)


def test_trained_on_compares_content_not_names_or_sizes(stacked_run, tmp_path):
    from birdstack.training.checkpoint import trained_on

    manifest = pd.read_csv(stacked_run / "data" / "manifest.csv")
    kept = manifest[~manifest["dropped"].astype(bool)]
    train = Path(kept.loc[kept["split"] == "train", "path"].iloc[0])
    val = Path(kept.loc[kept["split"] == "val", "path"].iloc[0])
    same_size = tmp_path / train.name  # same name and size, other bytes
    same_size.write_bytes(bytes(b ^ 0xFF for b in train.read_bytes()))
    copy = tmp_path / "renamed.bin"
    copy.write_bytes(train.read_bytes())
    ckpt = stacked_run / "checkpoints" / "best.ckpt"
    paths = [str(train), str(val), str(same_size), str(copy), str(tmp_path / "missing.ogg")]
    assert trained_on(ckpt, paths) == [True, False, False, True, False]
    moved = tmp_path / "moved.ckpt"  # out of its run folder: nothing to compare with
    moved.write_bytes(ckpt.read_bytes())
    assert trained_on(moved, paths) is None


def test_segments_model_gets_window_and_recording_figures(
    demo_dir, cache_dir, tmp_path, load_script
):
    # 2.5 s windows every 5 s on 2 species, trained on one random crop per recording and
    # epoch (validated on every window): small and quick
    run = _train(
        tmp_path / "seg",
        demo_dir,
        cache_dir,
        **{
            "data.top_k": 2,
            "preprocessing.encoding.kind": "segments",
            "preprocessing.encoding.window_s": 2.5,
            "preprocessing.encoding.hop_s": 5.0,
            "preprocessing.encoding.train_crops": 1,
        },
    )
    res = evaluate_checkpoint(
        run / "checkpoints" / "best.ckpt",
        demo_dir,
        manifest=run / "data" / "manifest.csv",
        split="val",
        out_dir=tmp_path / "eval",
        cache_dir=cache_dir,
        progress=False,
    )
    assert res.window is not None and res.window.n > res.recording.n
    logged = json.loads((run / "result.json").read_text())["best"]
    # windows scored alone = the training log's per-window figures; pooled = val/rec_*
    assert res.window.accuracy == pytest.approx(logged["val/acc"], abs=1e-6)
    assert res.window.log_loss == pytest.approx(logged["val/loss"], rel=1e-4)
    assert res.recording.accuracy == pytest.approx(logged["val/rec_acc"], abs=1e-6)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["window"]["n"] == res.window.n
    assert (tmp_path / "eval" / "confusion_windows.png").is_file()
    assert (tmp_path / "eval" / "confusion_windows.csv").is_file()

    # scripts/end_window.py: its regular windows are validation's, its end windows extra
    end_window = load_script("end_window")
    rows = end_window.score_run(run, str(demo_dir), "best", str(cache_dir))
    assert [r[1].split(" (")[0] for r in rows] == [
        "every regular window",
        "last regular window, recordings with an end window",
        "the end window",
    ]
    right, n = (int(v) for v in rows[0][2].split(" / "))
    assert n == res.window.n and right / n == pytest.approx(logged["val/acc"], abs=1e-6)
    n_last, n_end = (int(r[2].split(" / ")[1]) for r in rows[1:])
    assert 0 < n_end == n_last <= res.recording.n


def test_metrics_agree_with_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 50)
    probs = rng.dirichlet(np.ones(4), 50)
    m = classification_metrics(y, probs, list("abcd"))
    pred = probs.argmax(1)
    assert m.accuracy == pytest.approx((pred == y).mean())
    assert m.f1_macro == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-6)
    assert m.log_loss == pytest.approx(-np.log(probs[np.arange(50), y]).mean())
    assert m.confusion.sum() == 50 and m.confusion[1, 2] == ((y == 1) & (pred == 2)).sum()
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        classification_metrics(y, probs[:, :3], list("abcd"))


def test_a_diverging_loss_gets_a_log_axis(tmp_path):
    from birdstack.evaluation.plots import plot_curves, wants_log_axis

    calm = pd.DataFrame(
        {"epoch": [0, 1, 2], "val/acc": [0.2, 0.4, 0.5], "val/loss": [1.8, 1.5, 1.3]}
    )
    wild = calm.assign(**{"val/loss": [540.0, 60.0, 2.0]})
    assert not wants_log_axis([1.8, 1.3]) and wants_log_axis([540.0, 1.3])
    assert not wants_log_axis([0.0, 540.0])  # a log axis cannot show 0
    out = plot_curves({"calm": [calm], "wild": [wild]}, tmp_path / "c.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_read_manifest_keeps_the_kept_rows_and_names_the_file_when_it_cannot(tmp_path):
    from birdstack.data.prepare import read_manifest

    m = tmp_path / "manifest.csv"
    m.write_text(
        "rec_id,split,dropped,events\n"
        "001,train,False,\n"
        '002,val,False,"[{""t0"": 1}]"\n'
        "003,val,True,\n"
    )
    val = read_manifest(m, "val", {"rec_id": str, "events": str})
    assert val["rec_id"].tolist() == ["002"]  # ids stay text; the dropped row is left out
    assert val["events"].iloc[0].startswith("[")
    assert read_manifest(m, dtype={"rec_id": str})["rec_id"].tolist() == ["001", "002"]
    with pytest.raises(BadInputError, match=r"manifest\.csv.*no kept rows with split 'test'"):
        read_manifest(m, "test")
    # a multi-label evaluation's manifest without a 'dropped' column: every row is kept
    (tmp_path / "nodrop.csv").write_text("rec_id,split\na,val\nb,train\n")
    assert read_manifest(tmp_path / "nodrop.csv", "val")["rec_id"].tolist() == ["a"]
    (tmp_path / "nosplit.csv").write_text("rec_id\na\n")
    with pytest.raises(BadInputError, match="no 'split' column"):
        read_manifest(tmp_path / "nosplit.csv", "val")
    (tmp_path / "meta.csv").write_text("primary_label,filename\nx,a.ogg\n")
    with pytest.raises(BadInputError, match=r"meta\.csv.*not a birdstack manifest"):
        read_manifest(tmp_path / "meta.csv")
    with pytest.raises(BadInputError, match=r"absent\.csv.*manifest file not found"):
        read_manifest(tmp_path / "absent.csv")
