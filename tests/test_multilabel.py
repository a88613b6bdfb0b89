"""The multi-label task: annotations, window labels, metrics, training, evaluate, predict."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, fbeta_score, roc_auc_score

from birdstack.config import Config, ConfigError
from birdstack.data.annotations import (
    load_soundscapes,
    read_annotations,
    read_raven,
    window_targets,
)
from birdstack.data.metadata import load_metadata
from birdstack.evaluation.metrics import (
    THRESHOLD_RANGE,
    multilabel_metrics,
    per_class_ap,
    rowwise_f1,
    tune_thresholds,
)
from birdstack.inference.writers import OutputOptions, Prediction, raven_table, record
from birdstack.utils import BadInputError

pytestmark = pytest.mark.xdist_group("multilabel")


# ----------------------------------------------------------------------------- window labels


def test_window_labels_from_events_on_window_edges():
    """Three 5 s windows; events placed on and around the edges at 5 s and 10 s."""
    ev = pd.DataFrame(
        [
            (4.95, 5.05, "a", "bird"),  # 0.1 s, half in each window: both
            (4.00, 5.02, "b", "bird"),  # 0.02 s in window 1 < min(0.1, 0.51): window 0 only
            (10.0, 10.0, "c", "bird"),  # an instant exactly on the edge: the window it starts
            (9.70, 10.0, "a", "bird"),  # ends exactly at the edge: no overlap with window 2
            (2.00, 2.04, "c", "bird"),  # a 0.04 s call inside window 0
            (11.0, 12.0, "x", "bird"),  # a species outside the classes
            (6.00, 9.00, "b", "insect"),  # another taxon: never a target
            (12.0, 14.0, "unknown", "unknown"),
        ],
        columns=["start_s", "end_s", "label", "taxon"],
    )
    got = window_targets(ev, [0.0, 5.0, 10.0], 5.0, ["a", "b", "c"])
    assert got.tolist() == [
        [1.0, 1.0, 1.0],
        [1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0],
    ]
    # a stricter rule: an event must overlap a window by half its length
    strict = window_targets(ev, [0.0, 5.0, 10.0], 5.0, ["a", "b", "c"], 1.0, 0.6)
    assert strict[:, 0].tolist() == [0.0, 1.0, 0.0]  # 0.05 of 0.1 s is below 0.06 s


# ----------------------------------------------------------------------------- metrics


@pytest.fixture
def scored():
    rng = np.random.default_rng(3)
    y = (rng.random((80, 7)) < 0.25).astype(int)
    y[:, 6] = 0  # a class with no positive: left out of cmAP and AUROC
    y[:, 5] = 1  # a class with no negative: in cmAP, left out of AUROC
    s = np.clip(y * 0.3 + rng.random((80, 7)) * 0.8, 0, 1)
    return y, s


def test_cmap_and_auroc_match_scikit_learn(scored):
    y, s = scored
    m = multilabel_metrics(y, s, list("abcdefg"))
    pos = y.sum(axis=0) > 0
    both = pos & (y.sum(axis=0) < len(y))
    assert m.cmap == pytest.approx(average_precision_score(y[:, pos], s[:, pos]), abs=1e-6)
    assert m.auroc == pytest.approx(roc_auc_score(y[:, both], s[:, both]), abs=1e-6)
    ap = per_class_ap(y, s)
    assert np.isnan(ap[6]) and not np.isnan(ap[5])
    assert m.per_class["positives"].tolist() == y.sum(axis=0).tolist()
    # top-1: rows with a positive whose best-scored class is one of them
    has = y.any(axis=1)
    assert m.top1 == pytest.approx(np.mean(y[has, s[has].argmax(axis=1)] > 0))


def test_sample_and_rowwise_f1_match_their_definitions(scored):
    y, s = scored
    pred = s >= 0.6
    has = y.any(axis=1)
    want = f1_score(y[has], pred[has], average="samples", zero_division=0)
    assert rowwise_f1(y[has], pred[has], nocall=False).mean() == pytest.approx(want)
    # BirdCLEF 2021: an empty row (truth or prediction) is the label "nocall"
    y2 = np.array([[0, 0], [1, 0], [0, 0], [1, 1]])
    p2 = np.array([[0, 0], [0, 0], [1, 0], [1, 0]])
    assert rowwise_f1(y2, p2, nocall=True).tolist() == pytest.approx([1.0, 0.0, 0.0, 2 / 3])


def test_thresholds_maximise_f1_per_class(scored):
    y, s = scored
    thr = tune_thresholds(y, s, default=0.5)
    assert thr[6] == 0.5  # no positive: the default
    for c in range(5):
        best = max(f1_score(y[:, c], s[:, c] >= t) for t in np.unique(s[:, c]))
        got = f1_score(y[:, c], s[:, c] >= thr[c])
        lo, hi = THRESHOLD_RANGE
        if lo < thr[c] < hi:
            assert got == pytest.approx(best)
    assert ((thr >= THRESHOLD_RANGE[0]) & (thr <= THRESHOLD_RANGE[1])).all()
    # F0.5 weighs precision more: never a lower threshold than F1's, higher for some class
    strict = tune_thresholds(y, s, default=0.5, beta=0.5)
    assert (strict >= thr).all() and (strict > thr).any()
    for c in range(5):
        lo, hi = THRESHOLD_RANGE
        if lo < strict[c] < hi:
            best = max(fbeta_score(y[:, c], s[:, c] >= t, beta=0.5) for t in np.unique(s[:, c]))
            assert fbeta_score(y[:, c], s[:, c] >= strict[c], beta=0.5) == pytest.approx(best)


# ----------------------------------------------------------------------------- reading


def test_raven_table_reads_back_to_the_same_events(tmp_path):
    audio = tmp_path / "site1_0600.wav"
    audio.write_bytes(b"")  # only its name matters here
    pred = Prediction(
        str(audio),
        10.0,
        ["a_b", "c_d"],
        np.array([0.7, 0.6]),
        np.array([0.0, 5.0]),
        np.array([5.0, 10.0]),
        np.array([[0.9, 0.8], [0.2, 0.7]]),
    )
    opts = OutputOptions(top_k=2, min_confidence=0.5)
    table = tmp_path / "site1_0600.BirdStack.selection.table.txt"
    table.write_text(raven_table(record(pred, opts), 0.0, 16000.0), encoding="utf-8")
    ev = read_raven(table)
    want = [(str(audio), d.start_s, d.end_s, d.species) for d in pred.detections(opts)]
    got = list(zip(ev["file"], ev["start_s"], ev["end_s"], ev["label"]))
    assert sorted(got) == sorted(want)
    assert set(ev["taxon"]) == {"bird"}
    # the folder form finds the same table
    assert len(read_annotations(tmp_path)) == len(ev)


def test_bad_annotations_name_the_file_and_line(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"")
    bad = tmp_path / "annotations.csv"
    bad.write_text("filename,start_s,end_s,label\na.wav,2.0,1.0,x_y\n", encoding="utf-8")
    with pytest.raises(BadInputError, match=r"annotations\.csv.*line 2.*start <= end"):
        read_annotations(bad)
    bad.write_text("filename,start,end,label\n", encoding="utf-8")
    with pytest.raises(BadInputError, match="missing column"):
        read_annotations(bad)
    raven = tmp_path / "a.Table.1.selections.txt"
    raven.write_text("Selection\tBegin Time (s)\tEnd Time (s)\tSpecies\n1\tx\t2\ty\n")
    with pytest.raises(BadInputError, match=r"selections\.txt.*line 2"):
        read_raven(raven)


def test_soundscape_folder_is_read_with_its_events(soundscape_root):
    df = load_metadata(soundscape_root / "scapes")
    assert len(df) == 12 and df["exists"].all()
    ann = pd.read_csv(soundscape_root / "scapes" / "annotations.csv")
    first = df.iloc[0]
    birds = ann[(ann["filename"] == first["filename"]) & (ann["taxon"] == "bird")]
    assert first["primary_label"] in set(birds["label"])
    assert set([first["primary_label"], *first["secondary_labels"]]) == set(birds["label"])
    events = json.loads(first["events"])
    assert any(e[3] == "insect" for e in events)  # other taxa are kept, not targets
    assert "cicada_orni" not in set(df["primary_label"])
    assert len(load_soundscapes(soundscape_root / "scapes")) == 12


# ----------------------------------------------------------------------------- training


def _cfg(root: Path, out: Path, cache: Path, **over) -> Config:
    base = {
        "data": {
            "path": str(root / "scapes"),
            "negatives": [str(root / "negatives")],
            "top_k": None,
            "n_folds": 2,
            "min_class_recordings": 2,
            "cache_dir": str(cache),
            "group_by": "file_block",
            "block_size": 3,
        },
        "task": {"kind": "multilabel"},
        "preprocessing": {
            "audio": {"sample_rate": 16000},
            "spectrogram": {"n_mels": 32, "n_fft": 512, "hop_length": 256, "fmax": 8000},
            "encoding": {"kind": "segments", "window_s": 2.5, "hop_s": 2.5},
        },
        "model": {"name": "mobilenet_compact"},
        # 2 epochs of 3 steps: a one-epoch warm-up (the default schedule) would leave the
        # scores nearly constant, and cmAP over tied scores depends on summation order;
        # precise BN (the default) for the same reason: with 6 steps of running statistics
        # the eval-mode activations saturate and every clip gets the same scores
        "optim": {"scheduler": "none"},
        "trainer": {"epochs": 2, "batch_size": 8, "progress": False, "precise_bn": True},
        "out_dir": str(out),
    }
    return Config.from_dict(base).override(over)


@pytest.fixture(scope="module")
def ml_run(soundscape_root, tmp_path_factory, cache_dir):
    from birdstack.training.train import train

    out = tmp_path_factory.mktemp("ml-run") / "run"
    return train(_cfg(soundscape_root, out, cache_dir))


def test_multilabel_run_on_soundscapes(ml_run):
    r = ml_run
    assert {"val/rec_cmap", "val/rec_auroc", "val/rec_top1", "val/rec_open_set"} <= set(r.best)
    assert "val/acc" not in r.best  # no single-label figures
    assert 0.0 <= r.best["val/rec_cmap"] <= 1.0
    m = pd.read_csv(r.run_dir / "data" / "manifest.csv")
    kept = m[~m["dropped"]]
    assert kept["negative"].sum() == 4
    # the best epoch is the last of highest row-wise F1 over every validation clip: each
    # negative clip counts 1 when nothing passes its thresholds, 0 when something does
    hist = r.history.dropna(subset=["val/rec_f1_rowwise_all"]).sort_values("epoch")
    f1 = hist["val/rec_f1_rowwise_all"].to_numpy()
    assert r.best["epoch"] == hist["epoch"].iloc[len(f1) - 1 - int(np.argmax(f1[::-1]))]
    val = kept[kept["split"] == "val"]
    n_neg = int(val["negative"].sum())
    assert 0 < n_neg < len(val)
    mixed = (
        hist["val/rec_f1_rowwise"] * (len(val) - n_neg) + (1 - hist["val/rec_open_set"]) * n_neg
    ) / len(val)
    assert np.allclose(hist["val/rec_f1_rowwise_all"], mixed)
    # file blocks of 3 numbers: every block lies in one fold
    blocks = kept.groupby("session")["fold"].nunique()
    assert (blocks == 1).all()
    labels = [json.loads(v) for v in kept["labels"]]
    assert all(lab == [] for lab, neg in zip(labels, kept["negative"]) if neg)
    assert "cicada_orni" not in {x for lab in labels for x in lab}
    ck = torch.load(r.best_checkpoint, map_location="cpu", weights_only=True)
    block = ck["birdstack"]
    assert block["task"] == "multilabel"
    assert len(block["thresholds"]) == len(block["classes"]) == 3
    assert block["config"]["task"]["kind"] == "multilabel"


def test_window_items_carry_their_own_targets(soundscape_root, tmp_path, cache_dir):
    """A 2.5 s window gets the species of the events it overlaps, not the whole clip's."""
    from birdstack.data.annotations import parse_events
    from birdstack.data.datamodule import BirdDataModule
    from birdstack.data.prepare import prepare

    cfg = _cfg(soundscape_root, tmp_path / "r", cache_dir)
    prepared = prepare(cfg.data, cfg.preprocessing, progress=False, task=cfg.task)
    dm = BirdDataModule(prepared, val_fold=0, batch_size=4, task=cfg.task)
    ds = dm.train_set
    classes = prepared.classes
    checked = 0
    for idx, (i, start) in enumerate(ds.items):
        row = ds.records.iloc[i]
        _, y, _ = ds[idx]
        if row["negative"]:
            assert y.sum() == 0
            continue
        t0 = start * prepared.preprocessing.seconds_per_frame()
        want = window_targets(parse_events(row["events"]), [t0], 2.5, classes)[0]
        assert y.numpy().tolist() == want.tolist()
        checked += 1
    assert checked > 20


def test_multilabel_on_focal_demo_recordings(demo_dir, tmp_path, cache_dir):
    """Focal recordings: primary label 1, secondary labels task.secondary_weight."""
    from birdstack.training.train import train

    cfg = Config.from_dict(
        {
            "data": {"path": str(demo_dir), "top_k": 6, "cache_dir": str(cache_dir)},
            "task": {"kind": "multilabel", "secondary_weight": 0.5, "loss": "focal"},
            "preprocessing": {"encoding": {"kind": "segments", "train_crops": 1}},
            "trainer": {"epochs": 1, "batch_size": 8, "progress": False},
            "out_dir": str(tmp_path / "focal"),
        }
    )
    r = train(cfg)
    assert "val/rec_cmap" in r.best
    m = pd.read_csv(r.run_dir / "data" / "manifest.csv")
    kept = m[~m["dropped"]]
    assert len(kept) == 48  # multi-label keeps what the study's secondary/balance rules drop
    assert kept["labels"].map(json.loads).map(len).max() >= 1


def test_other_species_become_negatives_split_by_session(demo_dir, cache_dir):
    """data.other_species=negatives: the unselected species' recordings are kept as
    all-negative examples in both splits (grouped by session like the rest), except
    those whose secondary labels name a selected species, which stay positives for it."""
    from birdstack.data.prepare import prepare

    def prep(other: str) -> pd.DataFrame:
        cfg = Config.from_dict(
            {
                "data": {
                    "path": str(demo_dir),
                    "top_k": 3,
                    "cache_dir": str(cache_dir),
                    "other_species": other,
                },
                "task": {"kind": "multilabel"},
            }
        )
        m = prepare(cfg.data, cfg.preprocessing, progress=False, task=cfg.task).manifest
        return m[~m["dropped"]]

    kept, dropped = prep("negatives"), prep("drop")
    classes = sorted(set(dropped["primary_label"]))
    assert len(classes) == 3
    neg = kept[kept["negative"].astype(bool)]
    assert len(neg) > 0 and not neg["primary_label"].isin(classes).any()
    assert (neg["labels"].map(json.loads).map(len) == 0).all()  # no targets at all
    assert set(neg["split"]) == {"train", "val"}
    others = kept[~kept["primary_label"].isin(classes)]
    positives = others[~others["negative"].astype(bool)]
    # an other species' recording with a selected species among its secondary labels
    assert (positives["labels"].map(json.loads).map(len) > 0).all()
    assert len(kept) == len(dropped) + len(others)
    for _, g in kept.groupby("session"):
        assert g["fold"].nunique() == 1  # a session is never split across folds
    assert dropped["primary_label"].isin(classes).all()


@pytest.mark.parametrize("layout", ["birdclef folder", "its train_audio", "species folders"])
def test_negatives_folder_of_other_species(demo_dir, cache_dir, tmp_path, layout):
    """A labelled folder given as data.negatives (the README's remedy: the region's other
    birds): its recordings of a selected species are left out with a warning, never
    taught as negatives; its metadata's author and date group the rest by session."""
    from birdstack.data.prepare import prepare

    if layout == "birdclef folder":
        folder = demo_dir
    elif layout == "its train_audio":
        folder = demo_dir / "train_audio"
    else:  # a folder per species without any metadata: files linked, no CSV
        folder = tmp_path / "other_birds"
        for f in sorted((demo_dir / "train_audio").rglob("*.ogg")):
            (folder / f.parent.name).mkdir(parents=True, exist_ok=True)
            (folder / f.parent.name / f.name).symlink_to(f)
    cfg = Config.from_dict(
        {
            "data": {
                "path": str(demo_dir),
                "top_k": 3,
                "cache_dir": str(cache_dir),
                "other_species": "drop",
                "negatives": [str(folder)],
            },
            "task": {"kind": "multilabel"},
        }
    )
    prepared = prepare(cfg.data, cfg.preprocessing, progress=False, task=cfg.task)
    m, classes = prepared.manifest, prepared.classes
    neg = m[m["rec_id"].str.startswith("negatives/")]
    assert len(neg) == 48 and len(classes) == 3
    meta = load_metadata(demo_dir).set_index("filename")
    key = neg["filename"].map(lambda f: f.removeprefix("train_audio/"))
    if layout == "species folders":  # only the folder names the species
        own = key.map(lambda f: Path(f).parent.name).isin(classes)
        assert own.sum() == 24  # 8 recordings of each selected species
    else:  # the metadata: primary and secondary labels
        labels = meta["primary_label"].map(lambda p: [p]) + meta["secondary_labels"]
        own = pd.Series([bool(set(labels[k]) & set(classes)) for k in key], index=neg.index)
        assert own.sum() > 24  # background birds of a selected species count too
    assert neg.loc[own, "dropped"].all() and not neg.loc[~own, "dropped"].any()
    assert neg.loc[own, "drop_reason"].str.startswith("data.negatives: a recording of").all()
    assert [w for w in prepared.warnings if w.startswith(f"data.negatives: {own.sum()} file(s)")]
    kept = neg[~own]
    assert (kept["labels"].map(json.loads).map(len) == 0).all()
    focal = m[~m["rec_id"].str.startswith("negatives/") & ~m["dropped"]]
    assert set(focal["primary_label"]) == set(classes)
    if layout == "species folders":  # nothing says who recorded what: a file per session
        assert (kept["session"] == kept["rec_id"]).all()
    else:
        want = meta["author"].astype(str) + " | " + meta["date"].astype(str)
        assert (kept["session"].to_numpy() == want.loc[key[~own]].to_numpy()).all()
        for _, g in kept.groupby("session"):
            assert g["fold"].nunique() == 1


def test_multilabel_ranks_species_by_their_own_recordings(demo_dir, tmp_path, cache_dir):
    """--top-k counts a focal recording for its primary label only: a background bird
    named as a secondary label in many recordings does not displace the species the
    recordings are of (it stays a target when asked for by name)."""
    from birdstack.data.prepare import prepare

    meta = pd.read_csv(demo_dir / "train_metadata.csv")
    meta["secondary_labels"] = "['sylvia_atricapilla']"  # in every recording's background
    (tmp_path / "train_audio").symlink_to(demo_dir / "train_audio")
    meta.to_csv(tmp_path / "train_metadata.csv", index=False)

    def classes(**data) -> list[str]:
        cfg = Config.from_dict(
            {
                "data": {"path": str(tmp_path), "cache_dir": str(cache_dir), **data},
                "task": {"kind": "multilabel"},
            }
        )
        return prepare(cfg.data, cfg.preprocessing, progress=False, task=cfg.task).classes

    top = classes(top_k=2)
    assert "sylvia_atricapilla" not in top
    assert top == sorted(meta["primary_label"].unique())[:2]  # 8 recordings each: by name
    assert "sylvia_atricapilla" in classes(top_k=None, species=[top[0], "sylvia_atricapilla"])


def test_multilabel_refuses_what_it_cannot_do(demo_dir):
    from birdstack.data.prepare import prepare

    cfg = Config.from_dict({"data": {"path": str(demo_dir), "negatives": ["x"]}})
    with pytest.raises(ConfigError, match="needs task.kind=multilabel"):
        prepare(cfg.data, cfg.preprocessing, progress=False)
    with pytest.raises(ConfigError, match="other_species='keep' is not one of 'drop', 'negatives'"):
        Config.from_dict({"data": {"other_species": "keep"}})
    from birdstack.training.train import validate_config

    bad = cfg.override(
        {"task.kind": "multilabel", "distill.teacher": "t.ckpt", "distill.unlabelled": ["u"]}
    )
    with pytest.raises(ConfigError, match="unlabelled audio"):
        validate_config(bad)


def test_a_multilabel_student_learns_from_a_multilabel_teacher(
    ml_run, soundscape_root, tmp_path, cache_dir
):
    """Distillation as a task switch: the teacher's per-class probabilities (not
    renormalised) are the soft targets; at alpha 0 the student is the run without a
    teacher, weight for weight; a teacher of the other task is refused."""
    from birdstack.inference.predictor import Predictor
    from birdstack.training.distill import Teacher
    from birdstack.training.train import train
    from birdstack.utils import BirdstackError

    teacher = str(ml_run.last_checkpoint)
    classes = Predictor.from_checkpoint(teacher).classes
    clip = soundscape_root / "scapes" / "audio" / "scape002.wav"
    table = Teacher(teacher, classes, tmp_path / "tc", multilabel=True).table(clip)
    np.testing.assert_allclose(
        table.window_probs, Predictor.from_checkpoint(teacher).predict(clip).window_probs, atol=1e-5
    )
    with pytest.raises(BirdstackError, match="multi-label teacher cannot teach a single-label"):
        Teacher(teacher, classes, tmp_path / "tc")

    def student(alpha: float, name: str):
        over = {"distill.teacher": teacher, "distill.alpha": alpha}
        return train(_cfg(soundscape_root, tmp_path / name, cache_dir, **over))

    def weights(ckpt):
        return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]

    same = student(0.0, "alpha0")
    for k, v in weights(ml_run.last_checkpoint).items():
        torch.testing.assert_close(weights(same.last_checkpoint)[k], v, msg=k)
    taught = student(1.0, "alpha1")
    w0, w1 = weights(same.last_checkpoint), weights(taught.last_checkpoint)
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)
    ck = torch.load(taught.last_checkpoint, map_location="cpu", weights_only=True)["birdstack"]
    assert ck["task"] == "multilabel" and len(ck["thresholds"]) == len(classes)
    assert "val/rec_cmap" in taught.best


# ----------------------------------------------------------------------------- evaluate / predict


def test_evaluate_scores_windows_clips_and_the_open_set(ml_run, soundscape_root, tmp_path):
    from birdstack.evaluation.evaluate import evaluate_checkpoint

    r = ml_run
    res = evaluate_checkpoint(
        r.best_checkpoint,
        soundscape_root / "scapes",
        manifest=r.run_dir / "data" / "manifest.csv",
        split="val",
        out_dir=tmp_path / "eval",
        cache_dir=None,
        progress=False,
    )
    assert res.multilabel and res.window is not None
    assert res.n_negatives > 0 and res.open_set is not None
    assert (tmp_path / "eval" / "pr_curves.png").stat().st_size > 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["task"] == "multilabel" and "cmap" in metrics["recording"]
    assert set(pd.read_csv(tmp_path / "eval" / "per_class.csv")["class"]) == set(res.classes)
    # the recording-level figure training logged at that epoch, reproduced by evaluate
    hist = pd.read_csv(r.run_dir / "metrics.csv")
    logged = float(hist.loc[hist["epoch"] == r.best["epoch"], "val/rec_cmap"].iloc[0])
    assert res.recording.cmap == pytest.approx(logged, abs=1e-4)


def test_evaluate_without_manifest_leaves_out_the_training_clips(ml_run, soundscape_root):
    from birdstack.evaluation.evaluate import evaluate_checkpoint

    m = pd.read_csv(ml_run.run_dir / "data" / "manifest.csv")
    scapes = soundscape_root / "scapes"
    trained = {
        str(Path(p).resolve())
        for p in m.loc[(m["split"] == "train") & ~m["dropped"], "path"]
        if scapes.resolve() in Path(p).resolve().parents
    }
    assert trained
    res = evaluate_checkpoint(ml_run.best_checkpoint, scapes, cache_dir=None, progress=False)
    assert res.excluded["used_in_training"] == len(trained)
    assert not {str(Path(f).resolve()) for f in res.predictions["file"]} & trained


def test_predict_reports_every_species_above_its_stored_threshold(
    ml_run, soundscape_root, tmp_path, caplog, capsys
):
    from birdstack.cli.main import build_parser

    ck = torch.load(ml_run.best_checkpoint, map_location="cpu", weights_only=True)
    classes = ck["birdstack"]["classes"]
    # class 0 always, class 1 never, class 2 by its score
    ck["birdstack"]["thresholds"] = [0.0, 1.01, 0.5]
    edited = tmp_path / "edited.ckpt"
    torch.save(ck, edited)
    clip = soundscape_root / "scapes" / "audio" / "scape002.wav"
    out = tmp_path / "pred"
    argv = ["predict", str(edited), str(clip), "--out", str(out), "--hop-s", "2.5"]
    argv += ["--min-confidence", "0", "--no-progress"]
    with caplog.at_level(logging.INFO, logger="birdstack"):
        for _ in range(2):  # the second run resumes (and says so: the log is captured)
            args = build_parser().parse_args(argv)
            assert args.func(args) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("already predicted" in m for m in messages)
    # a multi-label model can report nothing, so predict does not warn that it cannot
    assert not any("single-label model" in m for m in messages)
    det = pd.read_csv(out / "detections.csv")
    # the summary counts what the files hold
    assert f"{len(det)} detection(s) in 1 of 1 recording(s)" in capsys.readouterr().out
    per_window = det.groupby("start_s")["species"].apply(set)
    assert len(per_window) == 4  # 10 s in 2.5 s windows
    assert all(classes[0] in s and classes[1] not in s for s in per_window)
    conf = det[det["species"] == classes[2]]["confidence"]
    assert (conf >= 0.5).all()


def test_field_false_detections_script_counts_what_predict_reports(
    ml_run, soundscape_root, monkeypatch, load_script
):
    """scripts/field_false_detections.py: files the run trained on are left out, and a file
    counts when some window has a species at or above its threshold and predict's 0.1
    floor (the soundscapes stand in for a field folder: half of them trained the run)."""
    from birdstack.features.audio import find_audio_files
    from birdstack.inference.predictor import Predictor

    mod = load_script("field_false_detections")

    field = soundscape_root / "scapes" / "audio"
    (row,) = mod.score_run(ml_run.run_dir, {"neg": field}, [0.5])  # one rule: thresholds
    man = pd.read_csv(ml_run.run_dir / "data" / "manifest.csv")
    trained = {str(Path(p).resolve()) for p in man.loc[man["split"] == "train", "path"]}
    held_out = [f for f in find_audio_files(field) if str(f.resolve()) not in trained]
    assert 0 < row["neg: files"] == len(held_out) < len(find_audio_files(field))
    p = Predictor.from_checkpoint(ml_run.run_dir / "checkpoints" / "last.ckpt")
    floor = np.maximum(np.asarray(p.thresholds), 0.1)
    hit = [bool((p.predict(f).window_probs >= floor).any()) for f in held_out]
    assert row["neg: files with a detection"] == pytest.approx(np.mean(hit))
    assert row["fold"] == 0 and row["variant"] == ml_run.run_dir.name
    assert row["checkpoint"] == "last"

    # --checkpoint best scores the run's best.ckpt instead (the file a user deploys)
    loaded = []

    class Stop(Exception):
        pass

    def record(path, *args, **kwargs):
        loaded.append(Path(path))
        raise Stop

    monkeypatch.setattr(mod.Predictor, "from_checkpoint", record)
    with pytest.raises(Stop):
        mod.score_run(ml_run.run_dir, {"neg": field}, [0.5], checkpoint="best")
    assert loaded == [ml_run.run_dir / "checkpoints" / "best.ckpt"]


def test_onnx_export_keeps_thresholds_and_sigmoid(ml_run, tmp_path):
    from birdstack.inference.export import export_onnx
    from birdstack.inference.predictor import Predictor

    onnx_path = export_onnx(ml_run.best_checkpoint, tmp_path / "m.onnx")
    via_onnx = Predictor.from_onnx(onnx_path)
    via_torch = Predictor.from_checkpoint(ml_run.best_checkpoint)
    assert via_onnx.multilabel and via_torch.multilabel
    np.testing.assert_allclose(via_onnx.thresholds, via_torch.thresholds)
    x = np.random.default_rng(0).random((3, *via_torch.preprocessing.input_shape()), np.float32)
    p_onnx = via_onnx.activation(via_onnx.logits(x))
    p_torch = via_torch.activation(via_torch.logits(x))
    np.testing.assert_allclose(p_onnx, p_torch, atol=1e-4)
    assert not np.allclose(p_torch.sum(axis=1), 1.0)  # independent sigmoids, not a softmax


def test_birdstack_train_makes_a_detector_by_default(
    demo_dir, cache_dir, tmp_path, monkeypatch, load_script
):
    """`birdstack train` with no --task: a multi-label detector whose training and
    validation folds hold the other species' recordings as negatives; its checkpoint
    carries per-species thresholds, so predict may report nothing; --task multiclass is
    the study's single-label classifier."""
    from tests.test_reliability import run_cli

    from birdstack.inference.predictor import Predictor
    from birdstack.training.checkpoint import load_checkpoint

    argv = ["train", "--data", str(demo_dir), "--cache-dir", str(cache_dir), "--top-k", "3"]
    argv += [
        "--set",
        "preprocessing.encoding.train_crops=1",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--no-progress",
    ]
    assert run_cli([*argv, "--out", str(tmp_path / "det")], monkeypatch) == 0
    ckpt = tmp_path / "det" / "checkpoints" / "last.ckpt"
    assert load_checkpoint(ckpt)["birdstack"]["task"] == "multilabel"
    pred = Predictor.from_checkpoint(ckpt)
    assert pred.multilabel and len(pred.thresholds) == 3 == len(pred.classes)
    m = pd.read_csv(tmp_path / "det" / "data" / "manifest.csv")
    kept = m[~m["dropped"].astype(bool)]
    neg = kept[kept["negative"].astype(bool)]
    assert (
        set(neg["split"]) == {"train", "val"} and not neg["primary_label"].isin(pred.classes).any()
    )
    hist = pd.read_csv(tmp_path / "det" / "logs" / "metrics.csv")
    assert hist["val/rec_open_set"].notna().any()  # false detections on other species

    # scripts/detector_thresholds.py re-chooses the thresholds from predict's window
    # scores: its rule "recording maxima, with negatives" is the default, the run's own
    mod = load_script("detector_thresholds")
    rows = mod.score_run(tmp_path / "det", {})
    assert [r["rule"].split(" (")[0] for r in rows] == [
        f"{scores}, {negatives} negatives"
        for scores in ("windows", "recording maxima")
        for negatives in ("without", "with")
    ]
    assert rows[3]["thresholds"] == rows[3]["stored thresholds"]
    # the rule before 2026-12-04: validation windows without the negatives
    old_rule = ["--set", "task.threshold_on=windows", "--set", "task.threshold_negatives=false"]
    assert run_cli([*argv, *old_rule, "--out", str(tmp_path / "win")], monkeypatch) == 0
    rows = mod.score_run(tmp_path / "win", {})
    assert rows[0]["thresholds"] == rows[0]["stored thresholds"]

    assert (
        run_cli([*argv, "--task", "multiclass", "--out", str(tmp_path / "cls")], monkeypatch) == 0
    )
    block = load_checkpoint(tmp_path / "cls" / "checkpoints" / "last.ckpt")["birdstack"]
    assert block.get("task", "multiclass") == "multiclass"
    m = pd.read_csv(tmp_path / "cls" / "data" / "manifest.csv")
    assert m.loc[~m["dropped"].astype(bool), "primary_label"].nunique() == 3  # others dropped


def test_info_shows_a_detectors_thresholds(ml_run, capsys):
    from birdstack.cli.main import build_parser
    from birdstack.inference.model_info import model_info
    from birdstack.training.checkpoint import load_checkpoint

    block = load_checkpoint(ml_run.last_checkpoint)["birdstack"]
    info = model_info(ml_run.last_checkpoint)
    assert info.task == "multilabel" and info.thresholds == pytest.approx(block["thresholds"])
    assert "val/rec_cmap" in info.validation and info.chosen_by is None  # last.ckpt: not chosen
    args = build_parser().parse_args(["info", str(ml_run.last_checkpoint)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "detector" in out and "threshold" in out and "optimistic" not in out
    first = next(line for line in out.splitlines() if f" {info.classes[0]} " in line)
    assert f"{info.thresholds[0]:.3f}" in first
