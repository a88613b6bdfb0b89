"""Paired differences between the runs of two sweeps (same folds and seeds), from runs.csv.

A variant run in a sweep folder of its own (e.g. one added later) is compared fold by
fold with a variant of an earlier sweep whose report is committed under docs/results/:

    python scripts/paired_runs.py docs/results/distill_recipe_compact_top6/runs.csv \\
        outputs/sweeps/distill_unlabelled_compact_top6/runs.csv \\
        --reference "recipe + distilled" --variant "distilled + unlabelled"
    python scripts/paired_runs.py docs/results/distill_recipe_compact_top6/runs.csv \
        docs/results/recipe_lite0_top6/runs.csv --reference recipe --variant recipe \
        --names "mobilenet_compact, recipe" "efficientnet_lite0 (ImageNet), recipe"

Folds run in separate sweeps are pooled: several runs.csv files after the reference's
hold the variant, and ``--more-reference`` adds files to the reference's side (here the
reference's fold 0 was run in a sweep folder of its own):

    python scripts/paired_runs.py docs/results/distill_unlabelled_compact_all_species/runs.csv \
        docs/results/distill_regularised_compact_all_species/runs.csv \
        --more-reference docs/results/distill_unlabelled_compact_all_species_fold0/runs.csv \
        --reference "distilled + unlabelled" --variant "distilled + unlabelled + regularised"

Prints each side's mean ± std and the paired table of ``birdstack sweep`` reports (mean
difference, 95 % t-interval, paired t-test, folds won / lost), on the runs both have.
"""

from __future__ import annotations

import argparse

import pandas as pd

from birdstack.sweeps.report import markdown_table, paired_differences, paired_rows


def _runs(files: list[str], label: str, side: str) -> pd.DataFrame:
    """The runs of ``label`` pooled from ``files``; none, or a fold and seed twice, is an error."""
    runs = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
    runs = runs[runs["variant"] == label]
    if runs.empty:
        raise SystemExit(f"no runs of {label!r} in the {side} runs.csv")
    twice = runs[runs.duplicated(["fold", "seed"], keep=False)]
    if not twice.empty:
        pairs = sorted({(int(f), int(s)) for f, s in zip(twice["fold"], twice["seed"])})
        raise SystemExit(f"{label!r} has fold/seed {pairs} in more than one runs.csv")
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("reference_runs", help="runs.csv of the sweep holding the reference")
    ap.add_argument(
        "other_runs",
        nargs="+",
        help="runs.csv of the sweep holding the variant; several are pooled (folds of one "
        "variant run in separate sweeps), a fold and seed in two of them is an error",
    )
    ap.add_argument(
        "--more-reference",
        nargs="+",
        default=[],
        metavar="RUNS_CSV",
        help="further runs.csv files pooled with the reference's (its folds run elsewhere)",
    )
    ap.add_argument("--reference", required=True, help="the reference's variant label")
    ap.add_argument("--variant", required=True, help="the compared variant's label")
    ap.add_argument(
        "--names",
        nargs=2,
        metavar=("REFERENCE", "VARIANT"),
        help="names to print for the two sides (default: their labels)",
    )
    args = ap.parse_args()
    ref = _runs([args.reference_runs, *args.more_reference], args.reference, "reference")
    other = _runs(args.other_runs, args.variant, "variant")
    ref_name, variant = args.names or (args.reference, args.variant)
    if ref_name == variant:
        variant += " (other sweep)"
    ref, other = ref.assign(variant=ref_name), other.assign(variant=variant)
    runs = pd.concat([ref, other], ignore_index=True)
    for label, df in runs.groupby("variant", sort=False):
        done = df[df["status"] == "done"]
        print(
            f"{label}: {len(done)} runs, accuracy {done['acc'].mean():.3f} ± "
            f"{done['acc'].std():.3f}, macro-F1 {done['f1_macro'].mean():.3f} ± "
            f"{done['f1_macro'].std():.3f}"
        )
    paired = paired_differences(runs, {"all": [ref_name, variant]}, {"all": ref_name})
    header, rows = paired_rows(paired)
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
