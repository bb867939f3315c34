"""Several runs on one GPU, measured without Ray: N = 1, 2, 3, 4 real ``hmic train`` processes side by
side on one device (each its own seed and run folder), with CUDA MPS too where the machine has
``nvidia-cuda-mps-control`` (it says so where it does not).

    python benchmarks/pack_gpu.py [--device cuda] [--arch cnn14] [--steps 100] [--packing 1,2,3,4] [--json OUT]
    python benchmarks/pack_gpu.py --device cpu --arch cnn14-tiny --steps 3 --packing 1,2   # a CPU dry run

Each process trains two epochs of ``--steps`` batches; the second epoch's rows give the rates.
Printed per N: aggregate train clips/s (the sum over processes of train clips / (data + compute
seconds)), the ratio to N = 1, the projected runs per device-hour of the 248-run Table 1 grid
(OpenMIC's epoch of 12,678 + 2,237 clips, 30 epochs) and each process's peak GPU memory. Packing
leaves every run's result unchanged: each is its own process with its own seed (on CPU it is
bit-identical to a run alone, tested for the Ray engine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from table1_cost import EPOCHS, TRAIN_CLIPS, VAL_CLIPS, prepare_standin

from hmic import Run


def train_processes(n: int, args, data: Path, derived: Path, runs: Path, env: dict) -> list[dict]:
    procs = []
    for seed in range(n):
        cmd = [sys.executable, "-m", "hmic", "train", "--method", "resatt", "--arch", args.arch, "--pretrained", "none",
               "--epochs", "2", "--limit-batches", str(args.steps), "--batch-size", str(args.batch), "--lr", "1e-3",
               "--warmup-epochs", "0.5", "--seed", str(seed), "--data-dir", str(data), "--work-dir", str(derived),
               "--runs-dir", str(runs), "--device", args.device]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env))
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"hmic train failed:\n{err}")
    return [Run(runs / "resatt" / "lam0.80" / f"seed{seed}").metrics()[-1] for seed in range(n)]


def mps(on: bool) -> bool:
    """Start (or stop) the CUDA MPS daemon; False where the machine has none."""
    control = shutil.which("nvidia-cuda-mps-control")
    if control is None:
        return False
    if on:
        return subprocess.run([control, "-d"]).returncode == 0
    subprocess.run([control], input="quit\n", text=True)
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--arch", default="cnn14")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--packing", default="1,2,3,4")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-mps", action="store_true", help="leave out the MPS rows")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    counts = [int(n) for n in args.packing.split(",")]
    work = Path(tempfile.mkdtemp(prefix="hmic-pack."))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.device == "cpu":  # N processes share the cores
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1)))
    rows, notes = [], []
    try:
        data, derived = prepare_standin(work, max(40, int(args.steps * args.batch / 0.6) + 8), args.arch, args.workers)
        n_val = len((derived / "split" / "val.txt").read_text().split())
        modes = [False] + ([] if args.no_mps or args.device == "cpu" else [True])
        for use_mps in modes:
            if use_mps and not mps(True):
                notes.append("nvidia-cuda-mps-control is not on this machine: no MPS rows")
                continue
            try:
                for n in counts:
                    t0 = time.perf_counter()
                    got = train_processes(n, args, data, derived, work / f"runs-{n}-{int(use_mps)}", env)
                    rates = [r["train_clips"] / max(r["data_seconds"] + r["compute_seconds"], 1e-9) for r in got]
                    aggregate = sum(rates)
                    # one OpenMIC epoch per process at its measured rates: training, validation, checkpoints
                    epochs = [TRAIN_CLIPS / rate + VAL_CLIPS * r["validation_seconds"] / n_val + r["checkpoint_seconds"]
                              for rate, r in zip(rates, got)]
                    rows.append({"processes": n, "mps": use_mps, "aggregate_clips_per_second": aggregate,
                                 "runs_per_device_hour": n * 3600 / (EPOCHS * sum(epochs) / n),
                                 "peak_memory_bytes": [r.get("peak_memory_bytes") for r in got],
                                 "wall_seconds": time.perf_counter() - t0})
            finally:
                if use_mps:
                    mps(False)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = {r["mps"]: r["aggregate_clips_per_second"] for r in rows if r["processes"] == counts[0]}
    print(f"{args.device}, {args.arch}, batch {args.batch}; " + "; ".join(notes))
    print(f"{'N':>3} {'MPS':>4} {'clips/s':>10} {'× N=1':>7} {'runs/device-h':>14} {'peak GB each':>13}")
    for r in rows:
        mem = ", ".join(f"{m / 1e9:.1f}" for m in r["peak_memory_bytes"] if m) or "-"
        print(f"{r['processes']:>3} {'yes' if r['mps'] else 'no':>4} {r['aggregate_clips_per_second']:>10.1f} "
              f"{r['aggregate_clips_per_second'] / base[r['mps']]:>7.2f} {r['runs_per_device_hour']:>14.2f} {mem:>13}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": args.device, "arch": args.arch, "batch": args.batch,
                                         "notes": notes, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
