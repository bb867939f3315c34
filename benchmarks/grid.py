"""The same tiny grid through `--engine local` and `--engine ray` on this machine.

    python benchmarks/grid.py                     # CPU: engine overhead as a ratio, runs per hour
    python benchmarks/grid.py --gpu-packing 1,2,4 # GPU: full CNN14, 1/2/4 runs sharing one GPU

CPU: 2 methods × 2 λ × 2 seeds of cnn14-tiny on a 72-clip stand-in (rendered into --data-dir once).
Rows: local (sequential, all threads), ray with one slot (one run at a time, all threads: the
engine's own overhead), ray with one slot per core (runs side by side, one thread each).
GPU packing: N runs of full CNN14 (bf16 backbone) at once on one GPU through Ray (--gpus-per-run 1/N),
``--batches`` training batches each; training clips/s summed over the runs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch


from hmic import FrontendConfig  # noqa: E402
from hmic.data.openmic import OpenMIC  # noqa: E402
from hmic.data.features import featurize  # noqa: E402
from hmic.training.grid import LocalExecutor  # noqa: E402
from hmic import plan_grid, run_grid  # noqa: E402
from hmic.training.ray_engine import RayExecutor, import_ray  # noqa: E402
from hmic.data.split import make_split, save_split, split_dir, split_meta  # noqa: E402
from hmic.data.synth.dataset import SynthOptions, synthesize  # noqa: E402
from hmic import TrainConfig  # noqa: E402


def prepare(root: Path, clips: int) -> Path:
    work = root.parent / f"{root.name}.hmic"
    if not (root / "hmic-synth.json").exists() or not (work / "features").exists():
        synthesize(root, SynthOptions(clips=clips, seed=0), workers=os.cpu_count() or 1, progress=False)
        dataset = OpenMIC.load(root)
        save_split(make_split(dataset, 0.2, 0), split_dir(work), split_meta(dataset, 0.2, 0, 2))
        keys = sorted(dataset.train_keys + dataset.test_keys)
        featurize(keys, [dataset.audio_path(k) for k in keys], work, FrontendConfig(), workers=os.cpu_count() or 1,
                  progress=False)
    return work


def timed(configs, executor) -> float:
    t0 = time.perf_counter()
    run_grid(configs, executor)
    return time.perf_counter() - t0


def cpu(args) -> None:
    ray = import_ray()
    root = Path(args.data_dir)
    work = prepare(root, args.clips)
    cores = os.cpu_count() or 1
    base = TrainConfig(arch="cnn14-tiny", pretrained="none", epochs=args.epochs, batch_size=8, lr=1e-3,
                       warmup_epochs=0.5, data_dir=str(root), work_dir=str(work), device="cpu")
    tmp = Path(tempfile.mkdtemp(prefix="hmic-grid-bench-"))

    def configs(name: str):
        return plan_grid(replace(base, runs_dir=str(tmp / name)), ["gmp", "resatt"], [0.7, 0.9], [0, 1])

    rows = [("local (sequential)", 1, cores, timed(configs("local"), LocalExecutor(progress=False)))]
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
             object_store_memory=100 * 1024 * 1024)
    try:
        rows.append(("ray, one slot", 1, cores, timed(configs("ray1"), RayExecutor(cpus_per_run=cores, progress=False))))
        rows.append(("ray, one slot per core", cores, 1,
                     timed(configs("rayN"), RayExecutor(cpus_per_run=1, progress=False))))
    finally:
        ray.shutdown()
    n = len(configs("x"))
    print(f"{n} runs (cnn14-tiny, {args.epochs} epochs, {args.clips}-clip stand-in), {cores} cores, torch {torch.__version__}")
    print(f"{'engine':<26}{'runs at once':>13}{'threads/run':>12}{'wall s':>9}{'runs/hour':>11}{'vs local':>10}")
    for name, at_once, threads, seconds in rows:
        print(f"{name:<26}{at_once:>13}{threads:>12}{seconds:>9.1f}{3600 * n / seconds:>11.0f}{rows[0][3] / seconds:>10.2f}")
    print(f"engine overhead (ray one slot / local): {rows[1][3] / rows[0][3]:.2f}x wall time")


def gpu_packing(args) -> None:
    ray = import_ray()
    root = Path(args.data_dir)
    work = prepare(root, args.clips)
    tmp = Path(tempfile.mkdtemp(prefix="hmic-pack-bench-"))
    base = TrainConfig(method="resatt", arch="cnn14", pretrained="none", epochs=1, batch_size=16,
                       limit_batches=args.batches, data_dir=str(root), work_dir=str(work), device="cuda")
    ray.init(include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    rows = []
    try:
        for n in (int(v) for v in args.gpu_packing.split(",")):
            configs = plan_grid(replace(base, runs_dir=str(tmp / f"pack{n}")), ["resatt"], [0.8], list(range(n)))
            executor = RayExecutor(gpus_per_run=1.0 / n, cpus_per_run=max(1, (os.cpu_count() or n) // n), progress=False)
            seconds = timed(configs, executor)
            rows.append((n, seconds, n * args.batches * base.batch_size / seconds))
    finally:
        ray.shutdown()
    print(f"full CNN14 + resatt, bf16 backbone, {args.batches} batches of 16 per run, {torch.cuda.get_device_name()}")
    print(f"{'runs per GPU':>13}{'wall s':>9}{'train clips/s (sum)':>21}{'vs 1 run':>10}")
    for n, seconds, rate in rows:
        print(f"{n:>13}{seconds:>9.1f}{rate:>21.1f}{rate / rows[0][2]:>10.2f}")
    print("(wall time includes each run's start, data loading and validation: a lower bound on the gain)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="data/bench-grid")
    ap.add_argument("--clips", type=int, default=72)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--gpu-packing", default="", help="e.g. 1,2,4: full CNN14 runs per GPU")
    ap.add_argument("--batches", type=int, default=60, help="GPU packing: training batches per run")
    args = ap.parse_args()
    gpu_packing(args) if args.gpu_packing else cpu(args)


if __name__ == "__main__":
    main()
