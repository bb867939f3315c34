"""The frozen-protocol grid, timed: 7 methods × 5 λ × ``--seeds`` seeds (flat: one λ) trained by the real
``run_grid`` on cached embeddings (``hmic embed`` must have run), projected to OpenMIC's size, against a
fine-tuning step of full CNN14 measured in the same run on the same device.

    python benchmarks/frozen_grid.py --data-dir data/synth --backbone runs/synth/gmp/lam0.80/seed0 \\
        --arch cnn14-light --config configs/synth.yaml --runs-dir runs/synth-frozen [--seeds 8] [--json OUT]

Projection: a stack's training time (data + compute seconds of its metrics rows) grows with the train
clips (OpenMIC: 12,678 after the 15% validation split) and, per method, with the ratio of its stacked step at
2,048-d (full CNN14) to the stand-in's measured in the same run; validation with the validation clips
(2,237) and the epochs; checkpoints (best.pt and last.pt, one of each per run and epoch at most) with the
epochs and, per method, with the ratio of writing a 2,048-d run's last.pt to the stand-in's, measured in
the same run; the rest (predictions of val and test, start-up) with val + test clips (7,322).
Fine-tuning one run costs 30 epochs × ⌈12,678 / 16⌉ steps of full CNN14 at the step time measured here.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from common import LAMBDAS, lambdas_of
from embed_speed import cpu_name
from hmic import BackboneConfig
from hmic.training.config import load_config_file
from hmic import TrainConfig
from hmic import plan_grid, run_grid
from hmic.models.heads import hierarchical_loss
from hmic import load_hierarchy
from hmic.models.model import HierarchicalModel
from hmic.evaluation.report import METHOD_ORDER as METHODS
from hmic import Run

OPENMIC = {"train": 12_678, "val": 2_237, "test": 5_085}
EPOCHS = 30


def _store_dim(summary: dict) -> int:
    """The embedding width a frozen run trained on (its checkpoint's fine classifier's input)."""
    state = torch.load(Path(summary["run"]) / "best.pt", weights_only=True, mmap=True)
    return int(state["model"]["head.fine.weight"].shape[1])


def finetune_step_seconds(steps: int = 2, batch: int = 16) -> float:
    """Seconds of one fine-tuning step (forward, backward, Adam) of full CNN14 + gmp on this device (CPU)."""
    torch.manual_seed(0)
    model = HierarchicalModel(BackboneConfig("cnn14"), "gmp", load_hierarchy()).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    h = model.hierarchy
    x = torch.randn(batch, 1001, 64)
    ft, fm = torch.rand(batch, h.n_fine).round(), torch.ones(batch, h.n_fine, dtype=torch.bool)
    ct, cm = torch.rand(batch, h.n_coarse).round(), torch.ones(batch, h.n_coarse, dtype=torch.bool)
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        loss = hierarchical_loss(model(x), model.head, ft, fm, ct, cm, 0.8)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def benchmark_stack(method: str, dim: int, seeds: int, lambdas: int, n: int = 4096):
    """A ``hmic.training.frozen.Stack`` of ``seeds`` × ``lambdas`` fresh heads over ``n`` random ``dim``-d embeddings
    (a seed's heads share their batch, as in a grid)."""
    from hmic.training.frozen import Stack
    from hmic.models.heads import build_head

    h = load_hierarchy()
    torch.manual_seed(0)
    heads = [build_head(method, dim, h) for _ in range(seeds * lambdas)]
    z = torch.randn(n, dim).relu()
    targets = [torch.rand(n, h.n_fine).round(), torch.rand(n, h.n_fine) > 0.3,
               torch.rand(n, h.n_coarse).round(), torch.rand(n, h.n_coarse) > 0.3]
    return Stack(heads, LAMBDAS[:lambdas] * seeds, [s for s in range(seeds) for _ in range(lambdas)],
                 TrainConfig(method=method), z, targets, torch.device("cpu"))


def stack_step_seconds(method: str, dim: int, seeds: int, lambdas: int, steps: int = 20, batch: int = 16) -> float:
    """Seconds of one stacked step (``hmic.training.frozen.Stack.step``) of ``seeds`` × ``lambdas`` heads over
    ``dim``-d embeddings (a seed's heads share their batch, as in a grid)."""
    import numpy as np

    n = 4096
    stack = benchmark_stack(method, dim, seeds, lambdas, n)
    rngs = [np.random.default_rng(s) for s in stack.slot_seeds]
    order = np.stack([np.random.default_rng(100 + r).permutation(n) for r in range(len(rngs))])
    stack.step(order[:, :batch], rngs, 1e-4)
    t0 = time.perf_counter()
    for i in range(1, steps + 1):
        stack.step(order[:, i * batch:(i + 1) * batch], rngs, 1e-4)
    return (time.perf_counter() - t0) / steps


def matmul_floor_seconds(method: str, seeds: int, lambdas: int, dim: int = 2048, batch: int = 16, reps: int = 20) -> float:
    """Seconds of the matrix products one stacked step cannot avoid: for each seed's batch (B, D), the
    forward product with its λ heads' linear layers on Z (D, L·O) and their weight gradient (L·O, B) @
    (B, D), as float32 bmm over the seeds, timed alone on this CPU (no Python, no Adam, no loss)."""
    from hmic.models.heads import build_head

    head = build_head(method, dim, load_hierarchy())
    outputs = sum(m.out_features for m in head.modules() if isinstance(m, torch.nn.Linear) and m.in_features == dim)
    z = torch.randn(seeds, batch, dim)
    w = torch.randn(seeds, dim, lambdas * outputs)
    g = torch.randn(seeds, lambdas * outputs, batch)
    torch.bmm(z, w), torch.bmm(g, z)
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.bmm(z, w)
        torch.bmm(g, z)
    return (time.perf_counter() - t0) / reps


def adam_floor_seconds(method: str, seeds: int, lambdas: int, dim: int = 2048, reps: int = 20) -> float:
    """Seconds of the Adam step one stacked step cannot avoid: the stack's own fused Adam over its
    parameters (``seeds`` × ``lambdas`` heads over ``dim``-d embeddings) with gradients in place, timed
    alone. It streams the parameters, gradients and both moments through memory every step (float32:
    28 bytes per parameter), so on a CPU it is bound by memory bandwidth, not arithmetic."""
    stack = benchmark_stack(method, dim, seeds, lambdas, n=16)
    for p in stack.params.values():
        p.grad = torch.randn_like(p)
    stack.optimizer.step()
    t0 = time.perf_counter()
    for _ in range(reps):
        stack.optimizer.step()
    return (time.perf_counter() - t0) / reps


def last_pt_seconds(method: str, dim: int, folder: Path, writes: int = 10) -> float:
    """Seconds of writing one run's last.pt (its head over ``dim``-d embeddings and its Adam state) with
    ``hmic.models.checkpoint.save_checkpoint``, as every frozen run does once per epoch."""
    from hmic import FrontendConfig
    from hmic.models.checkpoint import save_checkpoint
    from hmic.training.finetune import build_model

    model = build_model(TrainConfig(method=method, protocol="frozen"), load_hierarchy(), FrontendConfig(), embedding_dim=dim)
    adam = {n: {"step": 1.0, "exp_avg": torch.randn_like(p), "exp_avg_sq": torch.rand_like(p)}
            for n, p in model.head.named_parameters()}
    path = folder / f"{method}-{dim}.pt"
    t0 = time.perf_counter()
    for epoch in range(writes):
        save_checkpoint(path, model, FrontendConfig(), {}, epoch=epoch, best={"val_fine_loss": 1.0, "epoch": 0},
                        training={"optimizer": adam, "rng": None, "history": [{}] * epoch})
    path.unlink()
    return (time.perf_counter() - t0) / writes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--backbone", required=True)
    ap.add_argument("--arch", default="cnn14")
    ap.add_argument("--config", type=Path)
    ap.add_argument("--runs-dir", required=True)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--skip-finetune-step", action="store_true")
    args = ap.parse_args()
    from hmic.devices import keep_freed_memory

    keep_freed_memory()  # as 'hmic train --protocol frozen' does (the stacks' allocator opt-in)
    values = load_config_file(args.config) if args.config else {}
    base = TrainConfig(**{**values, "protocol": "frozen", "pretrained": args.backbone, "arch": args.arch,
                          "data_dir": args.data_dir, "runs_dir": args.runs_dir, "precision": args.precision, "device": "cpu"})
    configs = plan_grid(base, METHODS, LAMBDAS, list(range(args.seeds)))
    t0 = time.perf_counter()
    summaries = run_grid(configs, resume=True)
    wall = time.perf_counter() - t0
    val_s = 0.0
    train_by_method: dict[str, float] = {}
    save_by_method: dict[str, float] = {}
    clips = {}
    for s, cfg in zip(summaries, configs):
        rows = Run(Path(s["run"])).metrics()
        if cfg.method not in train_by_method:  # a stack's data and compute seconds are shared by its members
            train_by_method[cfg.method] = sum(r["data_seconds"] + r["compute_seconds"] for r in rows)
        val_s += sum(r["validation_seconds"] for r in rows)
        save_by_method[cfg.method] = save_by_method.get(cfg.method, 0.0) + sum(r["checkpoint_seconds"] for r in rows)
    train_s, save_s = sum(train_by_method.values()), sum(save_by_method.values())
    pred = Run(Path(summaries[0]["run"]))
    for part in ("val", "test"):
        clips[part] = len(pred.predictions(part)["keys"])
    clips["train"] = Run(Path(summaries[0]["run"])).metrics()[0]["train_clips"]
    rest = max(0.0, wall - train_s - val_s - save_s)
    epochs = base.epochs
    # a step over OpenMIC's CNN14 embeddings (2,048-d) costs more than over the stand-in's: each method's
    # training time is scaled by the ratio of its two stacked-step times, measured here
    dim = _store_dim(summaries[0])
    ratios, save_ratios = {}, {}
    for method in METHODS:
        lambdas = len(lambdas_of(method))
        ratios[method] = (stack_step_seconds(method, 2048, args.seeds, lambdas)
                          / stack_step_seconds(method, dim, args.seeds, lambdas))
        save_ratios[method] = last_pt_seconds(method, 2048, Path(args.runs_dir)) / last_pt_seconds(method, dim, Path(args.runs_dir))
    scale_epochs = EPOCHS / epochs
    openmic_steps = EPOCHS * math.ceil(OPENMIC["train"] / base.batch_size)
    floor = {m: openmic_steps * matmul_floor_seconds(m, args.seeds, len(lambdas_of(m)), batch=base.batch_size)
             for m in METHODS}
    adam_floor = {m: openmic_steps * adam_floor_seconds(m, args.seeds, len(lambdas_of(m))) for m in METHODS}
    projected_save = sum(t * scale_epochs * save_ratios[m] for m, t in save_by_method.items())
    scale_steps = OPENMIC["train"] / clips["train"] * EPOCHS / epochs
    projected_train = sum(t * scale_steps * ratios[m] for m, t in train_by_method.items())
    dim_ratio = projected_train / (train_s * scale_steps)  # the time-weighted mean ratio
    scale_train = scale_steps * dim_ratio
    scale_val = OPENMIC["val"] / clips["val"] * scale_epochs
    scale_save = projected_save / save_s if save_s else scale_epochs
    scale_rest = (OPENMIC["val"] + OPENMIC["test"]) / (clips["val"] + clips["test"])
    projected = train_s * scale_train + val_s * scale_val + save_s * scale_save + rest * scale_rest
    out = {"train_seconds_by_method": train_by_method,
           "projected_openmic_train_seconds_by_method": {m: t * scale_steps * ratios[m] for m, t in train_by_method.items()},
           "embedding_dim": dim, "step_time_ratio_2048_vs_dim": ratios, "last_pt_time_ratio_2048_vs_dim": save_ratios,
           "checkpoint_seconds_by_method": save_by_method, "checkpoint_seconds": save_s,
           "openmic_matmul_floor_seconds_by_method": floor, "openmic_matmul_floor_seconds": sum(floor.values()),
           "openmic_adam_floor_seconds_by_method": adam_floor, "openmic_adam_floor_seconds": sum(adam_floor.values()), "cpu": cpu_name(), "threads": torch.get_num_threads(), "runs": len(configs), "epochs": epochs,
           "clips": clips, "wall_seconds": wall, "train_seconds": train_s, "validation_seconds": val_s,
           "rest_seconds": rest, "projected_openmic_seconds": projected, "date": time.strftime("%Y-%m-%d"),
           }
    print(f"{out['cpu']}, {out['threads']} threads: {len(configs)} frozen runs, {epochs} epochs, "
          f"{clips['train']} train / {clips['val']} val / {clips['test']} test clips")
    print(f"{'':34} {'measured':>10} {'OpenMIC, 30 epochs':>20}")
    for name, value, scale in (("training (stacked steps)", train_s, scale_train),
                               ("validation", val_s, scale_val),
                               ("checkpoints (best.pt, last.pt)", save_s, scale_save),
                               ("predictions, start-up", rest, scale_rest)):
        print(f"{name:34} {value:9.1f}s {value * scale:19.1f}s")
    print(f"{'the grid':34} {wall:9.1f}s {projected:19.1f}s  ({projected / len(configs):.2f} s per run)")
    print(f"(training scaled by a {dim_ratio:.2f}× longer stacked step at 2,048-d than at {dim}-d, time-weighted; per method: "
          + ", ".join(f"{m} {r:.2f}" for m, r in ratios.items()) + ")")
    print(f"floor: the grid's unavoidable float32 matrix products alone (forward and weight gradient of each "
          f"head's layers on Z) take {sum(floor.values()):.0f} s at OpenMIC's size on this CPU: "
          + ", ".join(f"{m} {t:.0f}" for m, t in floor.items()))
    print(f"floor: the grid's Adam steps alone (each stack's fused Adam over its float32 parameters, every step) take "
          f"{sum(adam_floor.values()):.0f} s at OpenMIC's size on this CPU: "
          + ", ".join(f"{m} {t:.0f}" for m, t in adam_floor.items())
          + f"; products and Adam together {sum(floor.values()) + sum(adam_floor.values()):.0f} s")
    if not args.skip_finetune_step:
        step = finetune_step_seconds()
        per_run = EPOCHS * math.ceil(OPENMIC["train"] / 16) * step
        out.update(finetune_step_seconds=step, finetune_run_seconds=per_run,
                   cheaper_per_run=per_run / (projected / len(configs)))
        print(f"fine-tuning full CNN14 here: {step:.2f} s per step of 16 → {per_run / 3600:.1f} h per run; "
              f"the frozen run is {out['cheaper_per_run']:,.0f}× cheaper")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
