"""`hmic table`: Table 1 for whatever runs exist, and the paper's Fig. 3 and Fig. 4.

Reads runs only; everything it writes goes to its own output folder (the tables, the figures and
``lambda_selection.json``, the record of which λ each method was scored at).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hmic.errors import HmicError
from hmic.evaluation.scoring import EXTRA_METRICS, evaluate_runs
from hmic.fileio import csv_text, write_json, write_text
from hmic.evaluation.metrics import METRIC_LABELS, METRICS
from hmic.runs.run import LEVELS, Run, by_method, find_runs, finished_runs, predictions_hierarchy
from hmic.runs.selection import select_lambda, selected_runs as runs_of_setting
from hmic.evaluation.significance import ALPHA, N_BOOTSTRAP, against_reference
from hmic.models.heads import BASELINE, PAPER_FIGURE3, PAPER_FIGURE4, PAPER_TABLE1

REFERENCE = BASELINE  # the method every other is compared with (hmic table's ▲ / ▼)
METHOD_ORDER = tuple(PAPER_TABLE1)  # Table 1's row order; other methods follow, sorted
COLUMNS = [f"{lv} {METRIC_LABELS[m]}" for lv in LEVELS for m in METRICS]
# table1.csv's format: 1 (no format_version column) the paper's levels; 2: a format_version column, and for
# a hierarchy deeper than two a column group per depth (depth<d>_...) after the others
TABLE_VERSION = 2
UNTRAINED_LABEL = "AudioSet classifier, no training"  # runs written with --epochs 0 (docs/audioset-model.md)


def loss_label(row: dict) -> str:
    """The λ column of a table row: λ, or the level weights a run was trained with ('lw0.2-0.3-0.5')."""
    setting = row.get("setting", "")
    return setting if setting.startswith("lw") else f"{row['lambda']:.2f}"


def selected_runs(runs_dir: Path) -> dict[str, list[Run]]:
    """Per method (in Table 1's order), its finished runs at the λ selected on validation (``select_lambda``)."""
    groups = by_method(find_runs([runs_dir]))
    methods = [m for m in METHOD_ORDER if m in groups] + sorted(m for m in groups if m not in METHOD_ORDER)
    chosen = {}
    for method in methods:
        chosen[method] = runs_of_setting(groups[method], select_lambda(groups[method]))
    return chosen


def build_table(runs_dir: Path, split: str = "test", reference: str = REFERENCE, n_boot: int = N_BOOTSTRAP) -> list[dict]:
    """One row per method with finished runs: λ selected on validation, scores over that λ's seeds, and
    (where the reference method has runs) each cell's paired comparison with it (``hmic.evaluation.significance``)."""
    if not Path(runs_dir).is_dir() or not finished_runs(runs_dir):
        raise HmicError(f"no finished runs under {runs_dir}; train some with 'hmic train'")
    groups = by_method(finished_runs(runs_dir))
    chosen = selected_runs(runs_dir)
    protocol = runs_protocol([r for runs in groups.values() for r in runs], runs_dir)
    versus = against_reference(chosen, reference, split, n_boot) if reference in chosen and len(chosen) > 1 else {}
    rows = []
    for method, runs in chosen.items():
        agg = evaluate_runs(runs, split)
        first = rows[0]["aggregate"]["levels"] if rows else None
        if first is not None and max(len(first), len(agg.levels)) > 2:  # the paper's form: columns by fine and coarse
            if [lv["names"] for lv in agg.levels] != [lv["names"] for lv in first]:
                raise HmicError(f"{runs_dir} holds runs of different hierarchies ({rows[0]['method']} and {method}); a "
                                "table compares runs of one hierarchy: train them into separate --runs-dir folders")
        rows.append({"method": method, "lambda": runs[0].lam, "setting": runs[0].setting, "seeds": len(runs), "protocol": protocol,
                     "untrained": all(r.done().get("epochs") == 0 for r in runs),  # audioset --epochs 0
                     "selection": select_lambda(groups[method]),
                     "aggregate": agg.to_dict(), "versus": {"reference": reference,
                                                            "differences": [d.to_dict() for d in versus.get(method, [])]}})
    return rows


PROTOCOL_LABELS = {"finetune": "fine-tuned backbone (the paper's protocol)",
                   "frozen": "frozen backbone: the head alone on cached embeddings ('hmic embed')"}


def runs_protocol(runs: list[Run], runs_dir: Path) -> str:
    """The protocol (``TrainConfig.protocol``) of every run of a table: one, or an error naming both."""
    found = {r.config().get("protocol", "finetune") for r in runs}
    if len(found) > 1:
        raise HmicError(f"{runs_dir} holds runs of both protocols ({', '.join(sorted(found))}); a table compares runs "
                        "of one protocol: train them into separate --runs-dir folders")
    return found.pop() if found else "finetune"


def _marker(row: dict, level: str, metric: str) -> str:
    """▲ / ▼: significantly better / worse than the reference at 5% (Holm-corrected over methods)."""
    if row.get("seeds", 0) < 2:  # one seed: no spread to test a difference against
        return ""
    for d in row.get("versus", {}).get("differences", []):
        if d.get("pairs", 2) < 2:
            continue
        if d["level"] == level and d["metric"] == metric and d["p_holm"] is not None and d["p_holm"] < ALPHA:
            return " ▲" if d["mean"] > 0 else " ▼"
    return ""


def spread(std: float, seeds: int, digits: int = 1) -> str:
    """The std over seeds, or "—" for one seed (there is no spread to show)."""
    return "—" if seeds < 2 else f"{std:.{digits}f}"


def _macro(agg: dict, level: str) -> dict:
    """metric -> {mean, std} of one level: "fine", "coarse", or "depth d" (``Aggregate.levels``)."""
    if level in agg["macro"]:
        return agg["macro"][level]
    return agg["levels"][int(level.split()[1])]["macro"]


def _cell(agg: dict, level: str, metric: str) -> tuple[float, float]:
    d = _macro(agg, level)[metric]
    return 100 * d["mean"], 100 * d["std"]


def depth_levels(rows: list[dict]) -> list[str]:
    """The table's column groups by depth ("depth 0" .. ) when its runs' hierarchy is deeper than two, else
    none (the paper's fine and coarse columns only)."""
    levels = (rows[0]["aggregate"].get("levels") or []) if rows else []
    return [f"depth {lv['depth']}" for lv in levels] if len(levels) > 2 else []


def column_groups(rows: list[dict]) -> list[tuple[str, str]]:
    """(level, heading) of the Markdown table's column groups: the paper's fine and coarse; deeper, one
    group per depth ("depth d"), then the leaves at any depth (hmic's fine arrays, "leaves")."""
    depths = depth_levels(rows)
    if not depths:
        return [(lv, lv) for lv in LEVELS]
    return [(d, d) for d in depths] + [("fine", "leaves")]


def to_markdown(rows: list[dict], split: str) -> str:
    groups = column_groups(rows)
    deep = bool(depth_levels(rows))
    columns = [f"{heading} {METRIC_LABELS[m]}" for _, heading in groups for m in METRICS] + (["pooled AU(PRC)"] if deep else [])
    head = "| method | λ | seeds | " + " | ".join(columns) + " |"
    reference = rows[0].get("versus", {}).get("reference", REFERENCE) if rows else REFERENCE
    protocol = rows[0].get("protocol", "finetune") if rows else "finetune"
    lines = [f"Protocol: {PROTOCOL_LABELS.get(protocol, protocol)}.", "",
             f"Table 1 reproduction ({split} split, macro over tags, %, mean ± std over seeds; ▲ / ▼: significantly "
             f"better / worse than {reference} at 5%, paired by seed with a bootstrap over test clips, Holm-corrected "
             "over methods)", "", head, "|" + "---|" * (len(columns) + 3)]
    if deep:
        levels = rows[0]["aggregate"]["levels"]
        lines[2:2] = [f"Levels of the hierarchy (depth 0 at the top; 'leaves' = every leaf, at any depth; pooled AU(PRC): "
                      "one precision-recall curve over every observed (clip, node) pair): "
                      + "; ".join(f"depth {lv['depth']}: {', '.join(lv['names'])}" for lv in levels), ""]
    for r in rows:
        cells = [f"{m:.1f} ± {spread(s, r['seeds'])}{_marker(r, lv, mt)}" for (lv, mt), (m, s) in
                 (((lv, mt), _cell(r["aggregate"], lv, mt)) for lv, _ in groups for mt in METRICS)]
        if deep:
            pooled = r["aggregate"]["beyond"]["pooled_pr_auc"]
            cells.append(f"{100 * pooled['mean']:.1f} ± {spread(100 * pooled['std'], r['seeds'])}")
        name = f"{r['method']} ({UNTRAINED_LABEL})" if r.get("untrained") else r["method"]
        lines.append(f"| {name} | {loss_label(r)} | {r['seeds']} | " + " | ".join(cells) + " |")
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
    """Table 1 (%, mean and std), then each cell's difference from the reference (percentage points) with
    its Holm-corrected p-value, then the measures beyond the paper (``EXTRA_METRICS``, mean and std), the
    protocol; for a hierarchy deeper than two, the same cells per depth (``depth<d>_<metric>_...``); last, the
    file's ``format_version`` (``TABLE_VERSION``)."""
    cells = [(lv, m) for lv in LEVELS for m in METRICS]
    depth_cells = [(lv, m) for lv in depth_levels(rows) for m in METRICS]

    def col(lv):
        return lv.replace(" ", "")

    header = (["method", "lambda", "seeds"] + [f"{lv}_{m}_{s}" for lv, m in cells for s in ("mean", "std")]
              + [f"{lv}_{m}_vs_reference_{s}" for lv, m in cells for s in ("diff", "p_holm")]
              + [f"{name}_{s}" for name in EXTRA_METRICS for s in ("mean", "std")] + ["protocol"]
              + [f"{col(lv)}_{m}_{s}" for lv, m in depth_cells for s in ("mean", "std")]
              + [f"{col(lv)}_{m}_vs_reference_{s}" for lv, m in depth_cells for s in ("diff", "p_holm")]
              + ["format_version"])
    lines = []
    for r in rows:
        diffs = {(d["level"], d["metric"]): d for d in r.get("versus", {}).get("differences", [])}

        def values(which):
            return [f"{v:.4f}" for lv, m in which for v in _cell(r["aggregate"], lv, m)]

        def versus(which):
            return [x for lv, m in which for x in ((f"{100 * diffs[lv, m]['mean']:.4f}", f"{diffs[lv, m]['p_holm']:.4f}")
                                                   if (lv, m) in diffs else ("", ""))]

        beyond = [f"{r['aggregate']['beyond'][name][s]:.4f}" for name in EXTRA_METRICS for s in ("mean", "std")]
        lines.append([r["method"], loss_label(r), r["seeds"]] + values(cells) + versus(cells) + beyond
                     + [r.get("protocol", "finetune")] + values(depth_cells) + versus(depth_cells) + [TABLE_VERSION])
    return csv_text(header, lines)


def per_tag_csv(rows: list[dict]) -> str:
    """ROC-AUC, PR-AUC and F1 per tag and method (%, mean and std over seeds)."""
    header = ["method", "level", "tag"] + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")]
    lines = []
    for r in rows:
        agg = r["aggregate"]
        for lv in LEVELS:
            for tag, means in agg["per_tag"][lv].items():
                sds = agg["per_tag_std"][lv][tag]
                lines.append([r["method"], lv, tag] + [f"{100 * v:.4f}" for m in METRICS for v in (means[m], sds[m])])
    return csv_text(header, lines)


def figure_per_tag(rows: list[dict], path: Path, metric: str = "roc_auc") -> bool:
    """Per-tag differences of each method from the reference (mean over seeds), one panel per level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reference = next((r for r in rows if r["method"] == (rows[0].get("versus") or {}).get("reference", REFERENCE)), None)
    others = [r for r in rows if r is not reference]
    if reference is None or not others:
        return False
    fig, axes = plt.subplots(1, len(LEVELS), figsize=(12, 4.2), gridspec_kw={"width_ratios": [3, 1.3]})
    for ax, lv in zip(axes, LEVELS):
        tags = list(reference["aggregate"]["per_tag"][lv])
        width = 0.8 / len(others)
        for i, r in enumerate(others):
            diff = [100 * (r["aggregate"]["per_tag"][lv][t][metric] - reference["aggregate"]["per_tag"][lv][t][metric])
                    for t in tags]
            ax.bar(np.arange(len(tags)) + i * width - 0.4 + width / 2, diff, width, label=r["method"])
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(tags)), tags, rotation=70, fontsize=7)
        ax.set_title(f"{lv} {METRIC_LABELS[metric]}: method − {reference['method']} (pp)")
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def figure3(rows: list[dict], path: Path) -> bool:
    """Box plots of per-seed fine-level metrics for flat, gmp and resatt."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [r for r in rows if r["method"] in PAPER_FIGURE3]
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

    row = next((r for r in rows if r["method"] == PAPER_FIGURE4), None)
    if row is None:
        return False
    run = Run(Path(row["aggregate"]["runs"][0]))
    pred = run.predictions("test")
    if "attention" not in pred:
        return False
    thr = run.thresholds()
    fine_names, coarse_names = [str(n) for n in pred["fine_names"]], [str(n) for n in pred["coarse_names"]]
    hierarchy = predictions_hierarchy(pred)
    sources = [hierarchy.node_names[i] for i in hierarchy.attention_sources]  # the rows (at depth 2: the fine tags)
    fine_thr = np.array([thr["fine"][n] for n in fine_names])
    n_pos = ((pred["fine_probs"] >= fine_thr)).sum(axis=1)
    picks = list(np.argsort(-n_pos, kind="stable")[:n_clips])
    fig, axes = plt.subplots(1, len(picks), figsize=(3.3 * len(picks), 5.2), squeeze=False)
    for ax, i in zip(axes[0], picks):
        ax.imshow(pred["attention"][i].astype(np.float32), aspect="auto", cmap="viridis", vmin=0, vmax=1)
        ax.set_yticks(range(len(sources)), sources, fontsize=6)
        ax.set_xticks(range(len(coarse_names)), coarse_names, rotation=70, fontsize=6)
        tags = [fine_names[f] for f in np.where(pred["fine_probs"][i] >= fine_thr)[0]]
        ax.set_title(f"{pred['keys'][i]}\n" + ", ".join(tags[:4]) + ("…" if len(tags) > 4 else ""), fontsize=7)
    fig.suptitle("Fig. 4: resatt attention W (fine × coarse), softmax over fine tags")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_table(runs_dir: Path, out: Path, split: str = "test", reference: str = REFERENCE) -> dict:
    rows = build_table(runs_dir, split, reference)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = to_markdown(rows, split)
    write_text(out / "table1.md", md)
    write_text(out / "table1.csv", to_csv(rows))
    write_text(out / "per_tag.csv", per_tag_csv(rows))
    write_text(out / "table1.json", json.dumps(rows, indent=2) + "\n")
    write_json(out / "lambda_selection.json", {r["method"]: r["selection"] for r in rows})
    figs = []
    if figure3(rows, out / "fig3_fine_boxplots.png"):
        figs.append(out / "fig3_fine_boxplots.png")
    if figure4(rows, out / "fig4_resatt_attention.png"):
        figs.append(out / "fig4_resatt_attention.png")
    if figure_per_tag(rows, out / "fig_per_tag_vs_reference.png"):
        figs.append(out / "fig_per_tag_vs_reference.png")
    return {"rows": rows, "markdown": md, "figures": figs}
