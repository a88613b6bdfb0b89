"""Build the embedded demo data set ``data/birds-demo`` from the ``birds-dev`` set.

6 species x 8 recordings, each cut to at most 30 s from the middle of the recording
(song usually sits in the middle) and re-encoded as 32 kHz mono OGG Vorbis with
soundfile. Layout is BirdCLEF's (``train_metadata.csv`` + ``train_audio/<label>/XC<id>.ogg``),
with ``duration_s`` set to the cut length and a new column ``clip_start_s`` (offset of
the cut into the original recording, seconds).

The selection is deterministic (no randomness, ties broken by XC number):

1. candidates are the species' recordings rated >= 3 (lower-rated ones only if fewer
   than 8 are rated >= 3) whose licence allows excerpts: "no derivatives" (ND) licences
   are skipped, since a 30 s cut is an abridgment;
2. they are ordered: recordings whose secondary labels name another demo species last,
   then rating (high first), then XC number;
3. up to ``--short`` recordings shorter than 30 s (from different sessions) are taken
   first, so rules about short recordings get exercised;
4. the rest is filled in that order, first one recording per new session
   (author + date), then from sessions already used.

Usage::

    python scripts/make_demo_data.py --src /path/to/birds-dev --out data/birds-demo

The OGG files are not byte-identical between runs (libsndfile gives each Ogg stream a
random serial number), but the selection, the metadata and the decoded audio are.
"""

from __future__ import annotations

import argparse
import ast
import io
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from birdstack.utils import atomic_path, atomic_write_text

SPECIES = (
    "acrocephalus_arundinaceus",
    "acrocephalus_palustris",
    "vireo_latimeri",
    "gymnasio_nudipes",
    "coereba_flaveola",
    "margarops_fuscatus",
)
PER_SPECIES = 8
MAX_SECONDS = 30.0
SAMPLE_RATE = 32000
MIN_RATING = 3


def _xc_number(xc_id: str) -> int:
    return int(str(xc_id).removeprefix("XC"))


def _names_other_demo_species(row: pd.Series) -> bool:
    try:
        secondary = ast.literal_eval(str(row["secondary_labels"]))
    except (ValueError, SyntaxError):
        return False
    return any(s in SPECIES and s != row["primary_label"] for s in secondary)


def select_recordings(meta: pd.DataFrame, n: int = PER_SPECIES, n_short: int = 2) -> pd.DataFrame:
    """Pick ``n`` recordings per demo species (deterministic; see the module docstring)."""
    picked: list[pd.DataFrame] = []
    for label in SPECIES:
        rows = meta[(meta["primary_label"] == label) & ~meta["license"].str.contains("-nd")]
        if len(rows) < n:
            raise SystemExit(f"{label}: only {len(rows)} recordings in the source, need {n}")
        good = rows[rows["rating"] >= MIN_RATING]
        if len(good) < n:
            good = rows
        good = good.assign(
            _other=good.apply(_names_other_demo_species, axis=1),
            _xc=good["xc_id"].map(_xc_number),
            _session=good["author"].astype(str) + "|" + good["date"].astype(str),
        ).sort_values(["_other", "rating", "_xc"], ascending=[True, False, True])

        chosen: list[int] = []
        sessions: set[str] = set()

        for idx in good.index[good["duration_s"] < MAX_SECONDS]:
            if len(chosen) >= n_short:
                break
            if good.at[idx, "_session"] not in sessions:
                chosen.append(idx)
                sessions.add(good.at[idx, "_session"])
        for new_session_only in (True, False):
            for idx in good.index:
                if len(chosen) >= n:
                    break
                if idx in chosen:
                    continue
                if new_session_only and good.at[idx, "_session"] in sessions:
                    continue
                chosen.append(idx)
                sessions.add(good.at[idx, "_session"])
        picked.append(good.loc[chosen].sort_values("_xc"))
    out = pd.concat(picked).drop(columns=["_other", "_xc", "_session"])
    return out.reset_index(drop=True)


def cut_middle(audio: np.ndarray, sample_rate: int, max_seconds: float) -> tuple[np.ndarray, int]:
    """The middle ``max_seconds`` of ``audio`` and the start sample of the cut."""
    keep = int(round(max_seconds * sample_rate))
    if len(audio) <= keep:
        return audio, 0
    start = (len(audio) - keep) // 2
    return audio[start : start + keep], start


def encode_ogg(audio: np.ndarray, sample_rate: int, compression_level: float) -> bytes:
    """OGG Vorbis bytes of a mono float signal."""
    buf = io.BytesIO()
    sf.write(
        buf,
        audio,
        sample_rate,
        format="OGG",
        subtype="VORBIS",
        compression_level=compression_level,
    )
    return buf.getvalue()


def _licence_name(url: str) -> str:
    """``https://creativecommons.org/licenses/by-nc-sa/4.0/`` -> ``CC BY-NC-SA 4.0``."""
    parts = [p for p in url.rstrip("/").split("/") if p]
    return f"CC {parts[-2].upper()} {parts[-1]}"


def attribution_md(rows: pd.DataFrame, src_attribution: str) -> str:
    """ATTRIBUTION.md text: per-file table, licence notice, sources of the dev set."""
    licences = ", ".join(sorted(_licence_name(u) for u in rows["license"].unique()))
    sources = ""
    if "## Sources" in src_attribution:
        part = src_attribution.split("## Sources", 1)[1]
        sources = "## Sources of the original audio" + part.split("\n## ", 1)[0]
    lines = [
        "# birds-demo — attribution and licences",
        "",
        "All audio is real field recordings from **xeno-canto** (https://xeno-canto.org), made",
        "by the recordists named below. Nothing here was recorded by this project.",
        "",
        "**Licences: non-commercial.** Every file here is under a Creative Commons",
        f"*NonCommercial* licence ({licences}; see the table). Use",
        "the data for research, teaching and testing only (no commercial use), keep this",
        "attribution when redistributing, and share derived audio under the same licence.",
        "The files were cut and re-encoded as described below (an excerpt and a format",
        'change; nothing else was edited). Recordings under "NoDerivatives" licences were',
        "left out of this set on purpose, since an excerpt is an adaptation.",
        "",
        sources.rstrip(),
        "",
        "The files then went through the birds-dev set (re-encoded to 32 kHz mono OGG Vorbis",
        "with ffmpeg/libvorbis), and were cut for this demo by `scripts/make_demo_data.py`.",
        "",
        "## Files",
        "",
        "| file | XC id | url | recordist | licence | what was done |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows.itertuples(index=False):
        if r.clip_start_s > 0 or r.duration_s >= MAX_SECONDS:
            done = (
                f"cut to {r.duration_s:g} s from offset {r.clip_start_s:g} s "
                "(middle of the recording), re-encoded OGG Vorbis"
            )
        else:
            done = f"kept whole ({r.duration_s:g} s), re-encoded OGG Vorbis"
        cells = [f"train_audio/{r.filename}", r.xc_id, r.url, r.author, r.license, done]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


README = """# birds-demo

A small embedded data set for tests and the demo: **6 species x 8 recordings**
(48 files, {mb:.1f} MB), real xeno-canto field recordings taken from the birds-dev set.
Layout is BirdCLEF's:

* `train_metadata.csv` — one row per recording, same columns as birds-dev
  (`primary_label`, `secondary_labels`, `author`, `date`, `rating`, `url`, `license`, ...);
  `duration_s` is the length of the cut file and `clip_start_s` the offset (s) of the cut
  into the original recording.
* `train_audio/<primary_label>/XC<id>.ogg` — 32 kHz mono OGG Vorbis, at most 30 s each,
  cut from the middle of the original recording ({n_short} files are shorter than 30 s).

Species: {species}.

Some recordings name other demo species in `secondary_labels`, and some sessions
(same recordist and date) hold several recordings, so the study's selection rules
and session-grouped splits have something to do.

Licences are **non-commercial** (Creative Commons BY-NC-*); see `ATTRIBUTION.md`.
Rebuild with `python scripts/make_demo_data.py --src <birds-dev folder> --out data/birds-demo`.
"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", required=True, type=Path, help="the birds-dev folder")
    ap.add_argument("--out", default=Path("data/birds-demo"), type=Path)
    ap.add_argument(
        "--compression-level",
        type=float,
        default=0.5,
        help="libsndfile Vorbis compression level, 0 (best quality) .. 1 (smallest)",
    )
    ap.add_argument("--short", type=int, default=2, help="short (< 30 s) recordings per species")
    args = ap.parse_args(argv)

    meta = pd.read_csv(args.src / "train_metadata.csv", dtype=str, keep_default_na=False)
    meta["rating"] = meta["rating"].astype(int)
    meta["duration_s"] = meta["duration_s"].astype(float)
    rows = select_recordings(meta, n_short=args.short)

    starts, durations = [], []
    for r in rows.itertuples(index=False):
        audio, sr = sf.read(args.src / "train_audio" / r.filename, dtype="float32", always_2d=True)
        if sr != SAMPLE_RATE:
            raise SystemExit(f"{r.filename}: sample rate {sr}, expected {SAMPLE_RATE}")
        clip, start = cut_middle(audio.mean(axis=1), sr, MAX_SECONDS)
        data = encode_ogg(clip, sr, args.compression_level)
        dest = args.out / "train_audio" / r.filename
        with atomic_path(dest, suffix=".ogg") as tmp:
            tmp.write_bytes(data)
        starts.append(round(start / sr, 3))
        durations.append(round(len(clip) / sr, 3))
        print(f"{r.filename}: {len(clip) / sr:6.2f} s from {start / sr:7.2f} s, {len(data)} B")

    rows["duration_s"] = durations
    rows["clip_start_s"] = starts
    atomic_write_text(args.out / "train_metadata.csv", rows.to_csv(index=False))
    src_attr = (args.src / "ATTRIBUTION.md").read_text(encoding="utf-8")
    atomic_write_text(args.out / "ATTRIBUTION.md", attribution_md(rows, src_attr))
    total = sum(f.stat().st_size for f in (args.out / "train_audio").rglob("*.ogg"))
    readme = README.format(
        mb=total / 1e6,
        n_short=int((rows["duration_s"] < MAX_SECONDS).sum()),
        species=", ".join(f"`{s}`" for s in SPECIES),
    )
    atomic_write_text(args.out / "README.md", readme)
    for f in args.out.rglob("*"):
        f.chmod(0o755 if f.is_dir() else 0o644)
    print(f"{len(rows)} files, {total / 1e6:.2f} MB of audio in {args.out}")


if __name__ == "__main__":
    main()
