"""How BirdNET's location and season filter treats each species at its own recording places.

For every recording with coordinates, the occurrence that BirdNET V2.4's meta model gives
the recording's own species at the recording's place and week (and all year), and whether
the filter (threshold 0.03) would drop it. A species the filter drops at the places it
was recorded cannot be detected there with the filter on, whatever the audio says.

    .venv/bin/python scripts/birdnet_location_check.py ../shared/data/birds-dev \\
        --out docs/results/birdnet_location/own_species_occurrence.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from birdstack.data.metadata import load_metadata
from birdstack.features import birdnet
from birdstack.features.taxonomy import map_classes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="labelled data (BirdCLEF layout with latitude/longitude/date)")
    ap.add_argument("--threshold", type=float, default=0.03)
    ap.add_argument("--out", help="CSV with one row per species")
    args = ap.parse_args()
    meta = load_metadata(args.data)
    if not {"latitude", "longitude"} <= set(meta.columns):
        raise SystemExit(f"{args.data}: no latitude/longitude columns")
    classes = sorted(meta["primary_label"].astype(str).unique())
    sci = {}
    if "scientific_name" in meta:
        sci = dict(zip(meta["primary_label"].astype(str), meta["scientific_name"].astype(str)))
    mapping = map_classes(classes, birdnet.labels(), sci)
    index = dict(zip(mapping.classes, mapping.indices))
    model = birdnet.get_meta_model()
    rows = []
    for _, r in meta.iterrows():
        i = index[str(r["primary_label"])]
        try:
            lat, lon = float(r["latitude"]), float(r["longitude"])
        except (TypeError, ValueError):
            continue
        if i < 0 or lat != lat or lon != lon:
            continue
        date = r.get("date") if isinstance(r.get("date"), str) else None
        week = birdnet.week_48(date)
        rows.append(
            {
                "species": r["primary_label"],
                "occurrence": float(model.occurrence(lat, lon, week)[i]),
                "occurrence_all_year": float(model.occurrence(lat, lon, -1)[i]),
                "country": r.get("country", ""),
            }
        )
    d = pd.DataFrame(rows)
    d["dropped"] = d["occurrence"] < args.threshold
    table = (
        d.groupby("species")
        .agg(
            recordings=("occurrence", "size"),
            dropped_share=("dropped", "mean"),
            median_occurrence=("occurrence", "median"),
            median_all_year=("occurrence_all_year", "median"),
            country=("country", "first"),
        )
        .sort_values(["dropped_share", "median_occurrence"], ascending=[False, True])
        .round(6)
    )
    pd.set_option("display.width", 120)
    print(table.to_string())
    print(
        f"\n{d['dropped'].mean():.1%} of {len(d)} recordings: their own species is dropped at "
        f"their own place and week (threshold {args.threshold}); unmapped species: "
        f"{', '.join(mapping.unmapped) or 'none'}"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out)


if __name__ == "__main__":
    main()
