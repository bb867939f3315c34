"""What `hmic embed` costs: the real ``embed`` over a feature store of ``--clips`` 10-s clips with full CNN14,
in float32 and (where the device multiplies it natively) bf16, against the plain eval forward of the same
backbone (no BatchNorm folding) measured in the same run; projected to OpenMIC's 20,000 clips.

    python benchmarks/embed_speed.py [--device auto] [--arch cnn14] [--clips 64] [--json OUT]

The log-mel rows are random (the cost does not depend on them), the backbone is randomly initialised
and saved as an hmic checkpoint (the same file format as a run's best.pt); the store is written for real
(memmap, chunks committed), so the figures include everything `hmic embed` does but reading audio.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import device_name
from hmic import FrontendConfig
from hmic import BackboneConfig
from hmic.models.checkpoint import save_checkpoint
from hmic.devices import cpu_native_bf16, resolve_device
from hmic.training.embed import embed
from hmic.data.features import LOGMEL
from hmic.data.store import DONE, MANIFEST, create_store_files
from hmic.fileio import write_json
from hmic import load_hierarchy
from hmic.models.model import HierarchicalModel

OPENMIC_CLIPS = 20_000


def fake_store(work: Path, clips: int, frontend: FrontendConfig) -> None:
    """A complete feature store of random float16 log-mels (the layout ``hmic featurize`` writes)."""
    from hmic.data.features import store_dir

    folder = store_dir(work, frontend)
    folder.mkdir(parents=True)
    shape = (clips, frontend.n_frames, frontend.n_mels)
    create_store_files(folder, shape, LOGMEL, np.float16)
    rng = np.random.default_rng(0)
    data = np.memmap(folder / LOGMEL, dtype=np.float16, mode="r+", shape=shape)
    data[:] = rng.normal(-6, 3, size=shape).astype(np.float16)
    data.flush()
    np.ones(clips, dtype=np.uint8).tofile(folder / DONE)
    write_json(folder / MANIFEST, {"digest": frontend.digest(), "frontend": frontend.to_dict(), "dtype": "float16",
                                   "shape": list(shape), "keys": [f"{i:06d}_0" for i in range(clips)], "complete": True})


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except Exception:
        return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--arch", default="cnn14")
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    device = resolve_device(args.device)
    frontend = FrontendConfig()
    precisions = ["fp32"] + (["bf16"] if device.type == "cuda" or (device.type == "cpu" and cpu_native_bf16()) else [])
    results = {"device": device_name(device), "cpu": cpu_name(), "threads": torch.get_num_threads(), "arch": args.arch,
               "clips": args.clips, "date": time.strftime("%Y-%m-%d"), "native_bf16": "bf16" in precisions, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fake_store(work, args.clips, frontend)
        torch.manual_seed(0)
        model = HierarchicalModel(BackboneConfig(args.arch), "gmp", load_hierarchy())
        source = work / "backbone.pt"
        save_checkpoint(source, model, frontend, {}, epoch=0, best={})
        # the reference: the plain eval forward of the same backbone, batches of 32, float32
        backbone = model.backbone.eval().to(device, memory_format=torch.channels_last)
        x = torch.randn(32, frontend.n_frames, frontend.n_mels, device=device)
        with torch.inference_mode():
            backbone(x[:4])
            t0 = time.perf_counter()
            done = 0
            while done < args.clips:
                backbone(x)
                done += len(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            ref = done / (time.perf_counter() - t0)
        results["rows"].append({"what": "plain eval forward (reference)", "precision": "fp32", "clips_per_s": ref})
        for precision in precisions:
            s = embed(work, frontend, args.arch, source, precision=precision, device=args.device, progress=False)
            results["rows"].append({"what": "hmic embed", "precision": precision, "clips_per_s": s.clips_per_second,
                                    "seconds": s.seconds})
    print(f"{results['device']} — {results['cpu']}, {results['threads']} threads, {args.arch}, {args.clips} clips")
    print(f"{'what':34} {'precision':>9} {'clips/s':>9} {'vs reference':>13} {'20,000 clips':>13}")
    for r in results["rows"]:
        r["vs_reference"] = r["clips_per_s"] / ref
        r["projected_openmic_hours"] = OPENMIC_CLIPS / r["clips_per_s"] / 3600
        print(f"{r['what']:34} {r['precision']:>9} {r['clips_per_s']:9.2f} {r['vs_reference']:12.2f}x "
              f"{r['projected_openmic_hours']:11.2f} h")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
