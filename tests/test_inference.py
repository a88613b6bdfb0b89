"""Predictor: preprocessing from the checkpoint, recording rules, streaming, ONNX."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from birdstack.config import PcenConfig
from birdstack.data.datamodule import BirdDataset
from birdstack.features.audio import load_audio
from birdstack.features.encoding import encode_stacked
from birdstack.features.melbank import InputNorm
from birdstack.inference.export import read_onnx_metadata
from birdstack.inference.predictor import FrameStitcher, Predictor, TorchRunner, softmax
from birdstack.models import create_model
from birdstack.training.checkpoint import build_model_from_checkpoint, load_checkpoint
from birdstack.training.module import pool_by_recording
from test_inference_helpers import synthetic_song, write_wav

pytestmark = pytest.mark.xdist_group("inference")
# session fixtures (checkpoints trained once, the ONNX export): one instance for all modules
pytest_plugins = ["test_inference_helpers"]


@pytest.fixture(scope="module")
def stacked(stacked_run) -> Predictor:
    return Predictor.from_checkpoint(stacked_run.checkpoint)


@pytest.fixture(scope="module")
def segments(segments_run) -> Predictor:
    return Predictor.from_checkpoint(segments_run.checkpoint)


def _kept(run):
    m = run.manifest
    return m[~m["dropped"].astype(bool)].reset_index(drop=True)


def test_preprocessing_comes_from_the_checkpoint_and_features_match_training(
    stacked,
    stacked_run,
):
    info = load_checkpoint(stacked_run.checkpoint)["birdstack"]
    assert stacked.classes == info["classes"]
    assert (
        stacked.preprocessing.encoding.target_frames
        == (info["preprocessing"]["encoding"]["target_frames"])
    )
    row = _kept(stacked_run).iloc[0]
    wave = load_audio(row["path"], stacked.preprocessing.audio.sample_rate)
    cached = np.load(row["cache_file"])
    np.testing.assert_allclose(stacked.features(wave), cached, rtol=0, atol=1e-4)


def test_segments_recording_probs_equal_validation_pooling(segments, segments_run):
    """The documented recording rule is exactly what validation reports as val/rec_*."""
    val = _kept(segments_run)
    val = val[val["split"] == "val"].reset_index(drop=True).iloc[:4]
    assert len(val) >= 2
    ds = BirdDataset(val, segments.preprocessing)
    net, _ = build_model_from_checkpoint(load_checkpoint(segments_run.checkpoint))
    xs = torch.stack([ds[i][0] for i in range(len(ds))])
    with torch.inference_mode():
        probs = net(xs).softmax(-1)
    recs = torch.from_numpy(ds.item_recordings)
    pooled, _ = pool_by_recording(probs, recs, torch.zeros_like(recs))
    ours = np.stack([segments.recording_probs(np.load(f)) for f in val["cache_file"]])
    np.testing.assert_allclose(ours, pooled.numpy(), rtol=0, atol=1e-6)
    # negative control: another pooling (first windows only) is far outside the tolerance
    first = probs[[int(np.flatnonzero(ds.item_recordings == r)[0]) for r in range(len(val))]]
    assert np.abs(first.numpy() - ours).max() > 1e-4


@pytest.mark.parametrize(
    "band_norm, pcen",
    [("median", PcenConfig()), ("pcen", PcenConfig()), ("pcen", PcenConfig(0.06, 0.8, 10.0, 0.25))],
)
def test_band_norm_is_applied_by_predict_as_in_training(segments, segments_run, band_norm, pcen):
    """spectrogram.band_norm (and PCEN's settings) travel with the preprocessing: the
    predictor's inputs are the dataset's, window for window, and not the plain ones."""
    pre = segments.preprocessing
    median = dataclasses.replace(
        pre, spectrogram=dataclasses.replace(pre.spectrogram, band_norm=band_norm, pcen=pcen)
    )
    pred = Predictor(segments.runner, segments.classes, median, threads=1)
    val = _kept(segments_run)
    val = val[val["split"] == "val"].reset_index(drop=True).iloc[:2]
    ds = BirdDataset(val, median)
    db = np.load(val["cache_file"].iloc[0])
    w = pre.window_frames()
    ours = pred.encode(db[:, :w], w)
    np.testing.assert_allclose(ours, ds[0][0].numpy(), atol=1e-6)
    assert np.abs(segments.encode(db[:, :w], w) - ours).max() > 0.05  # not the plain input
    xs = np.stack([ds[i][0].numpy() for i in range(len(ds)) if ds.item_recordings[i] == 0])
    expected = softmax(segments.runner(xs)).mean(axis=0)
    np.testing.assert_allclose(pred.recording_probs(db), expected, atol=1e-5)


def test_stacked_recording_rule_is_the_training_encoding(stacked, stacked_run):
    pre = stacked.preprocessing
    t, c, top = pre.encoding.target_frames, pre.encoding.channels, pre.spectrogram.top_db
    net, _ = build_model_from_checkpoint(load_checkpoint(stacked_run.checkpoint))

    def direct(xs: list[np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(np.stack(xs))).softmax(-1).numpy()

    db = np.load(_kept(stacked_run).iloc[0]["cache_file"])
    short = db[:, : t - 37]  # shorter than the target: padded at the end, scored once
    np.testing.assert_allclose(
        stacked.recording_probs(short),
        direct([encode_stacked(short, t, c, InputNorm(top))])[0],
        atol=1e-6,
    )
    long = np.concatenate([db, db[:, ::-1], db], axis=1)[:, : 2 * t + t // 3]
    # longer than the target: trimmed from both ends, exactly as BirdDataset encodes it
    expected = direct([encode_stacked(long, t, c, InputNorm(top))])[0]
    np.testing.assert_allclose(stacked.recording_probs(long), expected, atol=1e-6)
    ds = BirdDataset(_kept(stacked_run).iloc[:1], pre)
    np.testing.assert_allclose(
        stacked.recording_probs(db), direct([ds[0][0].numpy()])[0], atol=1e-6
    )
    # negative control: the first target-long window is a different input
    assert (
        np.abs(direct([encode_stacked(long[:, :t], t, c, InputNorm(top))])[0] - expected).max()
        > 1e-4
    )


def test_window_probs_default_is_the_model_span_without_overlap(stacked):
    pre = stacked.preprocessing
    t = pre.input_frames()
    spf = pre.spectrogram.hop_length / pre.audio.sample_rate
    db = np.random.default_rng(0).normal(-40, 10, size=(pre.spectrogram.n_mels, 3 * t + t // 2 + 5))
    starts, ends, probs = stacked.window_probs(db.astype(np.float32))
    assert np.allclose(starts, np.arange(len(starts)) * t * spf)
    assert len(starts) == 4  # 3 full windows and the last partial one (over half a window)
    assert ends[0] == pytest.approx(pre.input_seconds())
    assert ends[-1] == pytest.approx((3 * t + t // 2 + 5) * spf)  # last partial window, clipped
    assert probs.shape == (len(starts), len(stacked.classes))
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    s2, e2, p2 = stacked.window_probs(db.astype(np.float32), window_s=3.0, hop_s=1.0)
    assert np.allclose(np.diff(s2), 1.0, atol=spf) and e2[0] == pytest.approx(3.0, abs=spf)


def test_frame_stitcher_equals_one_shot_log_mel(stacked):
    wave = synthetic_song(20.0, seed=1)
    whole = stacked.features(wave)
    st = FrameStitcher(stacked.features, 2048, 512, min_frames=1)
    cuts = [0, 1, 700, 5000, 5001, 77777, 200000, 320000, wave.size]
    parts = [st.push(wave[a:b]) for a, b in zip(cuts, cuts[1:])] + [st.finish()]
    stitched = np.concatenate([p for p in parts if p is not None], axis=1)
    assert stitched.shape == whole.shape
    np.testing.assert_allclose(stitched, whole, rtol=0, atol=1e-3)


def test_streamed_file_gives_the_same_windows_as_in_memory(segments, tmp_path):
    """A multi-block file (blocks not aligned to frames or windows) is scored identically."""
    wave = synthetic_song(47.3, seed=2)
    path = write_wav(tmp_path / "long.wav", wave, 32000)
    mem = segments.predict(load_audio(path, 32000))
    for block_s in (3.7, 11.0):
        streamed = segments.predict(path, block_s=block_s)
        np.testing.assert_array_equal(streamed.starts_s, mem.starts_s)
        np.testing.assert_array_equal(streamed.ends_s, mem.ends_s)
        np.testing.assert_allclose(streamed.window_probs, mem.window_probs, rtol=0, atol=1e-5)
        np.testing.assert_allclose(streamed.probs, mem.probs, rtol=0, atol=1e-5)
    assert mem.duration_s == pytest.approx(47.3, abs=1e-4)
    # 5 s windows without overlap: 9 full ones; the last 2.3 s are under the half window
    # (encoding.min_last_window) a partial window needs, so a 10th full window ends at
    # the end: every second is in some window
    assert len(mem.starts_s) == 10 and mem.ends_s[-1] == pytest.approx(47.3, abs=1e-4)
    assert mem.starts_s[-1] == pytest.approx(47.3 - 5.0, abs=0.05)
    np.testing.assert_allclose(np.diff(mem.starts_s[:9]), 5.0, atol=0.02)
    overlapping = segments.predict(path, hop_s=2.5)  # a partial window of 4.8 s now fits
    assert len(overlapping.starts_s) == int((47.3 - 5.0) // 2.5) + 1 + 1
    assert overlapping.ends_s[-1] == pytest.approx(47.3, abs=1e-4)


def test_stacked_length_hint_is_exact_and_a_lying_header_changes_nothing(
    stacked, tmp_path, monkeypatch, caplog
):
    """The header's length bounds a stacked model's memory; a wrong one is scored again."""
    from birdstack.features.melbank import n_frames

    t = stacked.preprocessing.input_frames()
    seconds = 2.5 * t * stacked.seconds_per_frame  # longer than the centred window
    path = write_wav(tmp_path / "long.wav", synthetic_song(seconds, seed=4), 32000)
    n = n_frames(load_audio(path, 32000).size, stacked.spec)
    assert stacked.expected_frames(path) == n
    hinted = stacked.predict(path, block_s=3.7)
    monkeypatch.setattr(stacked, "expected_frames", lambda p: None)
    plain = stacked.predict(path, block_s=3.7)
    monkeypatch.setattr(stacked, "expected_frames", lambda p: n // 3)  # a header that lies
    with caplog.at_level("WARNING"):
        lied = stacked.predict(path, block_s=3.7)
    assert "again without the length hint" in caplog.text
    for other in (hinted, lied):
        np.testing.assert_array_equal(other.probs, plain.probs)
        np.testing.assert_array_equal(other.window_probs, plain.window_probs)


def test_waveform_input_stereo_and_other_rates(segments):
    wave = synthetic_song(8.0, seed=3)
    mono = segments.predict(wave)
    stereo = segments.predict(np.stack([wave, wave]))  # [channels, samples]
    np.testing.assert_allclose(stereo.window_probs, mono.window_probs, atol=1e-6)
    import soxr

    at48 = soxr.resample(wave, 32000, 48000)
    other = segments.predict(at48, sample_rate=48000)
    np.testing.assert_array_equal(other.starts_s, mono.starts_s)
    np.testing.assert_allclose(other.probs, mono.probs, atol=0.02)


def test_onnx_export_is_self_describing_and_matches_torch(stacked, onnx_model, demo_dir):
    onnx_path = onnx_model
    meta = read_onnx_metadata(onnx_path)
    assert meta["classes"] == stacked.classes
    assert meta["preprocessing"] == stacked.preprocessing
    ort_pred = Predictor.from_onnx(onnx_path, threads=1, batch_size=5)
    files = sorted(demo_dir.glob("train_audio/*/*.ogg"))[::8]
    diffs = []
    for f in files:
        a, b = stacked.predict(f), ort_pred.predict(f)
        np.testing.assert_array_equal(a.starts_s, b.starts_s)
        diffs.append(np.abs(a.window_probs - b.window_probs).max())
        diffs.append(np.abs(a.probs - b.probs).max())
    assert max(diffs) < 1e-4, f"ONNX vs PyTorch max abs diff {max(diffs):.2e}"
    x = np.random.default_rng(0).random((3, *stacked.preprocessing.input_shape()), np.float32)
    np.testing.assert_allclose(
        softmax(ort_pred.logits(x)), softmax(stacked.logits(x)), rtol=0, atol=1e-4
    )


def test_torch_runner_runs_channels_last_with_the_plain_networks_logits(stacked_run):
    net, info = build_model_from_checkpoint(load_checkpoint(stacked_run.checkpoint))
    plain, _ = build_model_from_checkpoint(load_checkpoint(stacked_run.checkpoint))
    plain.eval()
    x = np.random.default_rng(1).random((4, *info.preprocessing.input_shape()), np.float32)
    with torch.inference_mode():
        expected = plain(torch.from_numpy(x)).numpy()
    runner = TorchRunner(net)

    def channels_last(m: torch.nn.Module) -> list[bool]:
        nhwc = torch.channels_last
        return [
            c.weight.is_contiguous(memory_format=nhwc)
            for c in m.modules()
            if isinstance(c, torch.nn.Conv2d)
        ]

    assert all(channels_last(runner.net)) and not all(channels_last(plain))
    np.testing.assert_allclose(runner(x), expected, rtol=0, atol=1e-4)
    # a head on embedding vectors (2-d inputs) runs as it is
    head = create_model("birdnet_linear", num_classes=3, in_chans=7546).eval()
    v = np.random.default_rng(2).random((5, 7546), np.float32)
    with torch.inference_mode():
        np.testing.assert_allclose(TorchRunner(head)(v), head(torch.from_numpy(v)).numpy())


def test_onnx_default_batch_and_batching_does_not_change_scores(stacked, onnx_model, demo_dir):
    """ONNX Runtime scores windows in small batches by default (its arena then reuses small
    buffers); the scores do not depend on how the windows are batched."""
    from birdstack.inference.predictor import DEFAULT_BATCH, DEFAULT_ONNX_BATCH

    small = Predictor.from_onnx(onnx_model, threads=1)
    assert small.batch_size == DEFAULT_ONNX_BATCH < DEFAULT_BATCH == stacked.batch_size
    one = Predictor.from_onnx(onnx_model, threads=1, batch_size=1)
    large = Predictor.from_onnx(onnx_model, threads=1, batch_size=DEFAULT_BATCH)
    f = sorted(demo_dir.glob("train_audio/*/*.ogg"))[3]
    a, b = one.predict(f), large.predict(f)
    assert len(a.starts_s) > 1  # one call per window against one call for all
    np.testing.assert_allclose(a.window_probs, b.window_probs, rtol=0, atol=1e-6)
    np.testing.assert_allclose(a.probs, b.probs, rtol=0, atol=1e-6)


def test_onnx_predict_runs_without_torch(onnx_model, demo_dir, tmp_path):
    """``birdstack predict model.onnx`` needs ONNX Runtime and NumPy only (issue #14's memory).

    Run in a fresh interpreter: the command must finish, write its CSV, and never
    import torch (about 670 MB of resident memory on its own).
    """
    import subprocess
    import sys

    f = sorted(demo_dir.glob("train_audio/*/*.ogg"))[0]
    out = tmp_path / "pred"
    code = (
        "import sys\n"
        "from birdstack.cli.main import main\n"
        f"rc = main(['predict', {str(onnx_model)!r}, {str(f)!r}, '--out', {str(out)!r}, "
        "'--threads', '1', '--no-progress'])\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
        "sys.exit(rc)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "NO-TORCH"
    assert (out / "recordings.csv").is_file() or list(out.glob("*.csv"))


def test_numpy_front_end_equals_the_torch_one_on_real_audio(demo_dir):
    """The ONNX path's NumPy log-mel against the feature cache's torch LogMel.

    float64: within 1e-4 dB everywhere. float32, which an ONNX predictor runs where
    fft_dtype_for allows it (default settings): the normalised model inputs agree to
    1e-4 (whole recordings and 5 s windows), though the deepest bins do differ. With
    power=1 the inputs would see float32's rounding, so float64 is kept there.
    """
    from birdstack.config import SpectrogramConfig
    from birdstack.features.mel import LogMel
    from birdstack.features.melbank import NumpyLogMel, fft_dtype_for, normalize_db_np

    files = sorted(demo_dir.glob("train_audio/*/*.ogg"))[::4]
    magnitude = SpectrogramConfig(n_fft=1024, hop_length=320, power=1.0)
    assert fft_dtype_for(SpectrogramConfig()) is np.float32
    assert fft_dtype_for(magnitude) is np.float64
    for spec in (SpectrogramConfig(), magnitude):
        exact, fast = NumpyLogMel(spec, 32000), NumpyLogMel(spec, 32000, fft_dtype_for(spec))
        deepest = 0.0
        for f in files:
            wave = load_audio(f, 32000)
            ref = LogMel(spec, 32000).compute(wave)
            got = exact(wave)
            assert got.shape == ref.shape and got.dtype == np.float32
            np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)
            quick = fast(wave)
            for a in range(0, ref.shape[1], 312):  # 5 s windows, each normalised on its own
                np.testing.assert_allclose(
                    normalize_db_np(quick[:, a : a + 312], spec.top_db),
                    normalize_db_np(ref[:, a : a + 312], spec.top_db),
                    rtol=0,
                    atol=1e-4,
                )
            deepest = max(deepest, float(np.abs(quick - ref).max()))
        if fast.dtype == np.float32:
            assert deepest > 1e-4  # the precision really changed
    for n in (0, 1, 2047, 2048, 5000):  # shorter than a frame, exactly one, several
        w = np.random.default_rng(n).standard_normal(n).astype(np.float32)
        spec = SpectrogramConfig()
        np.testing.assert_allclose(
            NumpyLogMel(spec, 32000)(w), LogMel(spec, 32000).compute(w), rtol=0, atol=1e-4
        )
        assert NumpyLogMel(spec, 32000, np.float32)(w).shape == (spec.n_mels, 1 + n // 512)


def test_missing_or_foreign_checkpoint_is_a_clear_error(tmp_path):
    from birdstack.utils import BadInputError

    with pytest.raises(BadInputError, match="not found"):
        Predictor.from_checkpoint(tmp_path / "nope.ckpt")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(BadInputError, match="bad.onnx"):
        Predictor.from_onnx(bad)
    assert Path(bad).exists()
