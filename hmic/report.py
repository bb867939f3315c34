"""`hmic table`: Table 1 for whatever runs exist, and the paper's Fig. 3 and Fig. 4.

Reads runs only; everything it writes goes to its own output folder (the tables, the figures and
``lambda_selection.json``, the record of which λ each method was scored at).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import HmicError
from .evaluation import evaluate_runs
from .fileio import csv_text, write_json, write_text
from .metrics import METRIC_LABELS, METRICS
from .runs import LEVELS, Run, by_method, finished_runs, select_lambda

METHOD_ORDER = ("flat", "levelwise", "topdown", "gap", "lp", "gmp", "resatt")
PAPER_TABLE1 = {  # the paper's Table 1: fine ROC, PR, F1, coarse ROC, PR, F1 (%)
    "flat": (91.7, 85.6, 83.3, 92.4, 89.6, 84.4), "levelwise": (91.9, 85.8, 83.7, 93.0, 90.4, 85.2),
    "topdown": (91.9, 85.4, 83.6, 93.0, 90.4, 85.3), "gap": (91.7, 85.6, 83.2, 91.7, 87.6, 84.6),
    "lp": (91.8, 85.8, 83.6, 75.3, 70.9, 67.6), "gmp": (91.9, 85.9, 83.6, 93.1, 90.7, 85.4),
    "resatt": (92.0, 86.0, 83.7, 93.1, 90.7, 85.5),
}
COLUMNS = [f"{lv} {METRIC_LABELS[m]}" for lv in LEVELS for m in METRICS]


def build_table(runs_dir: Path, split: str = "test") -> list[dict]:
    """One row per method with finished runs: λ selected on validation, scores over that λ's seeds."""
    groups = by_method(finished_runs(runs_dir))
    if not groups:
        raise HmicError(f"no finished runs under {runs_dir}; train some with 'hmic train'")
    methods = [m for m in METHOD_ORDER if m in groups] + sorted(m for m in groups if m not in METHOD_ORDER)
    rows = []
    for method in methods:
        selection = select_lambda(groups[method])
        lam = selection["selected_lambda"]
        runs = [r for r in groups[method] if f"{r.lam:.2f}" == f"{lam:.2f}"]
        agg = evaluate_runs(runs, split)
        rows.append({"method": method, "lambda": lam, "seeds": len(runs), "selection": selection,
                     "aggregate": agg.to_dict()})
    return rows


def _cell(agg: dict, level: str, metric: str) -> tuple[float, float]:
    d = agg["macro"][level][metric]
    return 100 * d["mean"], 100 * d["std"]


def to_markdown(rows: list[dict], split: str) -> str:
    head = "| method | λ | seeds | " + " | ".join(COLUMNS) + " |"
    lines = [f"Table 1 reproduction ({split} split, macro over tags, %, mean ± std over seeds)", "", head,
             "|" + "---|" * (len(COLUMNS) + 3)]
    for r in rows:
        cells = [f"{m:.1f} ± {s:.1f}" for m, s in (_cell(r["aggregate"], lv, mt) for lv in LEVELS for mt in METRICS)]
        lines.append(f"| {r['method']} | {r['lambda']:.2f} | {r['seeds']} | " + " | ".join(cells) + " |")
    left = {lv: sorted({t for r in rows for t in r["aggregate"]["left_out"][lv]}) for lv in LEVELS}
    if any(left.values()):
        lines += ["", "Left out of macro means (one class only among observed entries): "
                  + "; ".join(f"{lv}: {', '.join(t)}" for lv, t in left.items() if t)]
    lines += ["", "The paper's Table 1 (OpenMIC-2018, pretrained CNN14, 8 seeds), for reference:", "",
              "| method | " + " | ".join(COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 1)]
    for m, vals in PAPER_TABLE1.items():
        lines.append(f"| {m} | " + " | ".join(f"{v:.1f}" for v in vals) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict]) -> str:
    header = ["method", "lambda", "seeds"] + [f"{lv}_{m}_{s}" for lv in LEVELS for m in METRICS for s in ("mean", "std")]
    lines = []
    for r in rows:
        vals = [f"{v:.4f}" for lv in LEVELS for m in METRICS for v in _cell(r["aggregate"], lv, m)]
        lines.append([r["method"], f"{r['lambda']:.2f}", r["seeds"]] + vals)
    return csv_text(header, lines)


def figure3(rows: list[dict], path: Path) -> bool:
    """Box plots of per-seed fine-level metrics for flat, gmp and resatt."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [r for r in rows if r["method"] in ("flat", "gmp", "resatt")]
    if not chosen:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for ax, metric in zip(axes, METRICS):
        label = METRIC_LABELS[metric]
        data = [[100 * pr["fine"]["macro"][metric] for pr in r["aggregate"]["per_run"]] for r in chosen]
        ax.boxplot(data)
        ax.set_xticks(range(1, len(chosen) + 1), [r["method"] for r in chosen])
        ax.set_title(f"fine {label} (%)")
        ax.grid(alpha=0.3)
    fig.suptitle("Fig. 3: per-seed fine-level metrics")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def figure4(rows: list[dict], path: Path, n_clips: int = 4) -> bool:
    """resatt attention maps (F × C) for a few test clips, with their predicted tags."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    row = next((r for r in rows if r["method"] == "resatt"), None)
    if row is None:
        return False
    run = Run(Path(row["aggregate"]["runs"][0]))
    pred = run.predictions("test")
    if "attention" not in pred:
        return False
    thr = run.thresholds()
    fine_names, coarse_names = [str(n) for n in pred["fine_names"]], [str(n) for n in pred["coarse_names"]]
    fine_thr = np.array([thr["fine"][n] for n in fine_names])
    n_pos = ((pred["fine_probs"] >= fine_thr)).sum(axis=1)
    picks = list(np.argsort(-n_pos, kind="stable")[:n_clips])
    fig, axes = plt.subplots(1, len(picks), figsize=(3.3 * len(picks), 5.2), squeeze=False)
    for ax, i in zip(axes[0], picks):
        ax.imshow(pred["attention"][i].astype(np.float32), aspect="auto", cmap="viridis", vmin=0, vmax=1)
        ax.set_yticks(range(len(fine_names)), fine_names, fontsize=6)
        ax.set_xticks(range(len(coarse_names)), coarse_names, rotation=70, fontsize=6)
        tags = [fine_names[f] for f in np.where(pred["fine_probs"][i] >= fine_thr)[0]]
        ax.set_title(f"{pred['keys'][i]}\n" + ", ".join(tags[:4]) + ("…" if len(tags) > 4 else ""), fontsize=7)
    fig.suptitle("Fig. 4: resatt attention W (fine × coarse), softmax over fine tags")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_table(runs_dir: Path, out: Path, split: str = "test") -> dict:
    rows = build_table(runs_dir, split)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = to_markdown(rows, split)
    write_text(out / "table1.md", md)
    write_text(out / "table1.csv", to_csv(rows))
    write_text(out / "table1.json", json.dumps(rows, indent=2) + "\n")
    write_json(out / "lambda_selection.json", {r["method"]: r["selection"] for r in rows})
    figs = []
    if figure3(rows, out / "fig3_fine_boxplots.png"):
        figs.append(out / "fig3_fine_boxplots.png")
    if figure4(rows, out / "fig4_resatt_attention.png"):
        figs.append(out / "fig4_resatt_attention.png")
    return {"rows": rows, "markdown": md, "figures": figs}
