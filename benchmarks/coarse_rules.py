"""How right are coarse labels derived from partial fine labels? Measured on a stand-in dataset,
whose every stem's truth is known (``synth-ground-truth.csv``).

    python benchmarks/coarse_rules.py DATA_DIR [--hierarchy FILE]

For each rule of ``--coarse-rule``: the share of coarse entries that end up observed, and the share of
observed coarse labels that are wrong (a coarse tag is truly present when any of its fine tags'
stems is audible), split into wrong positives and wrong negatives.
"""

from __future__ import annotations

import argparse
from pathlib import Path


from hmic.data.synth.truth import coarse_rule_accuracy  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--hierarchy", default=None)
    args = ap.parse_args()
    result = coarse_rule_accuracy(args.data_dir, args.hierarchy)
    print(f"{args.data_dir}: {next(iter(result.values()))['entries']} coarse entries")
    print(f"{'rule':<8}{'observed':>10}{'wrong':>9}{'wrong +':>9}{'wrong -':>9}")
    for rule, r in result.items():
        print(f"{rule:<8}{100 * r['observed_share']:>9.1f}%{100 * r['wrong_share']:>8.1f}%"
              f"{100 * r['wrong_positive_share']:>8.1f}%{100 * r['wrong_negative_share']:>8.1f}%")


if __name__ == "__main__":
    main()
