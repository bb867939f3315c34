"""What Table 1 costs, measured by hmic itself: a few hundred steps of the real ``train_run`` (full CNN14
by default) on the present device, the epoch split from its metrics rows, projected to the 248-run grid.

    python benchmarks/table1_cost.py [--device auto] [--arch cnn14] [--steps 200] [--batch 16] [--json OUT]
    python benchmarks/table1_cost.py --device cpu --steps 3 --batch 4          # a CPU run (minutes)

A stand-in dataset is rendered, split and featurized in a temporary folder; one run trains two epochs
of ``--steps`` batches each (``--limit-batches``); the second epoch's row gives the rates (the first
pays warm-up: cuDNN's autotuning, the page cache). Printed: train clips/s (data + compute), the
split of an epoch into data, compute, validation and checkpoint seconds, bytes written per epoch,
the fraction of the bf16 (CUDA) or float32 matmul peak measured in the same run, and the projection:
OpenMIC's 14,915 train-partition clips a run sees per epoch (85% trained, 15% validated), 30 epochs,
7 methods × 5 λ × 8 seeds (flat: one λ) = 248 runs, and the disk a finished grid keeps (best.pt, the
predictions and the small files of each run; last.pt is removed when a run ends). The disk is summed
per method: each method's best.pt (the trained backbone with that method's head) and its val and test
predictions are written for real by the functions a run uses, since heads differ in size (resatt's
attention layer is 1.3 MB at 2,048-d, gmp's classifier 0.16 MB) and so do predictions (resatt and lp
keep an attention map per clip).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import SEEDS, device_name, lambdas_of, matmul_peak
from hmic import FrontendConfig
from hmic.models.backbones import BACKBONES, backbone_class
from hmic.models.checkpoint import save_checkpoint
from hmic.models.loading import Checkpoint
from hmic import TrainConfig
from hmic.data.openmic import OpenMIC
from hmic.devices import resolve_device
from hmic.data.features import featurize_dataset
from hmic.models.model import HierarchicalModel
from hmic.evaluation.report import METHOD_ORDER
from hmic import Run
from hmic.data.split import make_split, save_split, split_dir, split_meta
from hmic.data.synth.dataset import SynthOptions, synthesize
from hmic import train_run
from hmic.training.loop import predict_part
from hmic.training.data import load_training_data

RUNS_BY_METHOD = {m: SEEDS * len(lambdas_of(m)) for m in METHOD_ORDER}
RUNS = sum(RUNS_BY_METHOD.values())  # 248: six heads with a λ grid of 5, flat with one λ; 8 seeds each
EPOCHS = 30
TRAIN_PARTITION = 14_915
TRAIN_CLIPS, VAL_CLIPS = round(TRAIN_PARTITION * 0.85), round(TRAIN_PARTITION * 0.15)
TEST_CLIPS = 5_085


def prepare_standin(work: Path, clips: int, arch: str, workers: int) -> tuple[Path, Path]:
    """A rendered stand-in with its split and features under ``work``: (data folder, work folder)."""
    data = work / "data"
    synthesize(data, SynthOptions(clips=clips, seed=0), workers=workers, progress=False)
    dataset = OpenMIC.load(data)
    save_split(make_split(dataset, 0.2, 0), split_dir(work / "derived"), split_meta(dataset, 0.2, 0, 2))
    featurize_dataset(dataset, work / "derived", FrontendConfig(n_mels=backbone_class(arch).n_mels),
                      workers=workers, progress=False)
    return data, work / "derived"


def measure(args, work: Path) -> dict:
    data, _ = prepare_standin(work, args.clips, args.arch, args.workers)
    cfg = TrainConfig(method="resatt", arch=args.arch, pretrained="none", epochs=2, batch_size=args.batch,
                      limit_batches=args.steps, lr=1e-3, warmup_epochs=0.5, data_dir=str(data),
                      work_dir=str(work / "derived"), runs_dir=str(work / "runs"), device=args.device,
                      keep_last=True, compile=args.compile)
    t0 = time.perf_counter()
    summary = train_run(cfg, progress=False)
    wall = time.perf_counter() - t0
    run = Run(Path(summary["run"]))
    rows = run.metrics()
    row = rows[-1]
    n_val = len((work / "derived" / "split" / "val.txt").read_text().split())
    n_test = len((work / "derived" / "split" / "test.txt").read_text().split())
    small = sum(p.stat().st_size for p in run.folder.iterdir() if p.suffix in (".json", ".jsonl"))
    return {"row": row, "rows": rows, "wall_seconds": wall, "val_clips": n_val, "test_clips": n_test,
            "best_bytes": run.best_path.stat().st_size, "last_bytes": run.last_path.stat().st_size,
            "small_bytes": small, "methods": method_footprints(run, cfg, work / "footprints")}


def prediction_bytes(arrays: dict[str, np.ndarray], file_bytes: int) -> tuple[float, int]:
    """(bytes per clip, fixed bytes) of one predictions file of ``file_bytes``: the same arrays cut to no
    clip, compressed as ``Run.write_predictions`` does, give the fixed part (names, the hierarchy)."""
    n = len(arrays["keys"])
    empty = {k: v[:0] if v.ndim and v.shape[0] == n else v for k, v in arrays.items()}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **empty)
    fixed = buffer.tell()
    return (file_bytes - fixed) / max(n, 1), fixed


def method_footprints(trained: Run, cfg: TrainConfig, folder: Path) -> dict[str, dict]:
    """What each method's finished run keeps, written for real: best.pt of the trained run's backbone with
    that method's head (freshly initialised: sizes do not depend on training) and its val and test
    predictions, by the functions ``train_run`` uses. One method's files at a time are on disk."""
    data = load_training_data(cfg)
    device = resolve_device(cfg.device)
    backbone = Checkpoint.load(trained.best_path).model.backbone.to(device)
    out = {}
    for method in METHOD_ORDER:
        run = Run(folder / method)
        run.folder.mkdir(parents=True)
        torch.manual_seed(0)
        model = HierarchicalModel(backbone.cfg, method, data.hierarchy, backbone=backbone).to(device).eval()
        save_checkpoint(run.best_path, model, data.store.frontend, {**trained.config(), "method": method},
                        epoch=0, best={"val_fine_loss": 0.0, "epoch": 0})
        per_clip, fixed = 0.0, 0
        for name in ("val", "test"):
            arrays = predict_part(model, data.parts[name], data.store, device, cfg.precision)
            run.write_predictions(name, arrays)
            clip_bytes, file_fixed = prediction_bytes(arrays, run.predictions_path(name).stat().st_size)
            per_clip, fixed = per_clip + clip_bytes / 2, fixed + file_fixed
        out[method] = {"runs": RUNS_BY_METHOD[method], "best_bytes": run.best_path.stat().st_size,
                       "prediction_bytes_per_clip": per_clip, "fixed_prediction_bytes": fixed}
        shutil.rmtree(run.folder)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="cnn14", choices=BACKBONES.names())
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=200, help="training batches per epoch (two epochs run)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--clips", type=int, default=0, help="stand-in clips (default: enough for --steps batches)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (hmic train --compile)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    device = resolve_device(args.device)
    args.clips = args.clips or max(40, int(args.steps * args.batch / 0.6) + 8)  # train is ~60% of the clips
    work = Path(tempfile.mkdtemp(prefix="hmic-table1-cost."))
    try:
        m = measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    row = m["row"]
    train_rate = row["train_clips"] / max(row["data_seconds"] + row["compute_seconds"], 1e-9)
    val_rate = m["val_clips"] / max(row["validation_seconds"], 1e-9)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_peak(device, dtype)
    flops = 3 * 2 * backbone_class(args.arch).multiply_adds() * train_rate  # training ≈ 3× the forward pass
    epoch = TRAIN_CLIPS / train_rate + VAL_CLIPS / val_rate + row["checkpoint_seconds"]
    grid_hours = RUNS * EPOCHS * epoch / 3600
    run_bytes = {method: f["best_bytes"] + f["prediction_bytes_per_clip"] * (VAL_CLIPS + TEST_CLIPS)
                 + f["fixed_prediction_bytes"] + m["small_bytes"] for method, f in m["methods"].items()}
    grid_bytes = sum(RUNS_BY_METHOD[method] * b for method, b in run_bytes.items())
    report = {
        "device": device_name(device), "arch": args.arch, "batch": args.batch, "steps": args.steps,
        "compile": args.compile, "train_clips_per_second": train_rate, "validation_clips_per_second": val_rate,
        "epoch_split_seconds": {k: row[k] for k in ("data_seconds", "compute_seconds", "validation_seconds",
                                                    "checkpoint_seconds")},
        "bytes_written_per_epoch": row["checkpoint_bytes"], "best_bytes": m["best_bytes"], "last_bytes": m["last_bytes"],
        "peak_memory_bytes": row.get("peak_memory_bytes"),
        "matmul_peak_tflops": peak / 1e12, "fraction_of_peak": flops / peak,
        "projection": {"runs": RUNS, "epochs": EPOCHS, "train_clips": TRAIN_CLIPS, "val_clips": VAL_CLIPS,
                       "epoch_seconds": epoch, "grid_device_hours": grid_hours,
                       "finished_grid_disk_gb": grid_bytes / 1e9,
                       "disk_gb_if_last_pt_were_kept": (grid_bytes + RUNS * m["last_bytes"]) / 1e9,
                       "finished_run_mb_by_method": {method: b / 1e6 for method, b in run_bytes.items()}},
        "method_footprints": m["methods"],
        "rows": m["rows"], "wall_seconds": m["wall_seconds"],
    }
    print(f"{report['device']}, {args.arch}, batch {args.batch}, {args.steps} steps per epoch")
    print(f"{'train clips/s (data + compute)':<40}{train_rate:>12.1f}")
    print(f"{'validation clips/s':<40}{val_rate:>12.1f}")
    for k, v in report["epoch_split_seconds"].items():
        print(f"{'  ' + k.replace('_', ' '):<40}{v:>12.3f}")
    print(f"{'bytes written per epoch (MB)':<40}{row['checkpoint_bytes'] / 1e6:>12.1f}")
    print(f"{'fraction of the matmul peak':<40}{report['fraction_of_peak']:>12.3f}  ({peak / 1e12:.1f} TFLOP/s measured)")
    print(f"{'projected: one epoch of OpenMIC (s)':<40}{epoch:>12.0f}")
    print(f"{'projected: 248-run grid (device-hours)':<40}{grid_hours:>12.1f}")
    for method, b in run_bytes.items():
        print(f"{'  finished ' + method + ' run (MB) × ' + str(RUNS_BY_METHOD[method]):<40}{b / 1e6:>12.2f}")
    print(f"{'finished grid on disk (GB)':<40}{report['projection']['finished_grid_disk_gb']:>12.1f}"
          f"  ({report['projection']['disk_gb_if_last_pt_were_kept']:.0f} GB if last.pt were kept)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
