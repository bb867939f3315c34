"""`hmic predict` on a 3-minute song with the full-size CNN14 on CPU, against its multiply-add floor.

    python benchmarks/predict.py [--seconds 180] [--arch cnn14]

No trained full-size model is needed for timing: a run-shaped checkpoint with randomly initialised
weights and 0.5 thresholds is written to a temporary folder. The floor is
windows × 2 × multiply-adds / (matmul FLOP/s measured in the same run, same threads).
Reports the in-process time of Tagger.tag (decode → resample → log-mel → batched model) and the
wall time of the `hmic predict` command (which adds interpreter start-up and imports).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import device_name, matmul_peak  # noqa: E402
from dataclasses import asdict  # noqa: E402

from hmic.audio import FrontendConfig  # noqa: E402
from hmic.backbones import BACKBONES, BackboneConfig, count  # noqa: E402
from hmic.checkpoint import save_checkpoint  # noqa: E402
from hmic.dataset import OPENMIC_TAGS  # noqa: E402
from hmic.hierarchy import load_hierarchy  # noqa: E402
from hmic.model import HierarchicalTagger  # noqa: E402
from hmic.predict import Tagger  # noqa: E402
from hmic.synth.song import render_song  # noqa: E402
from hmic.train import TrainConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--arch", default="cnn14", choices=list(BACKBONES))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hmic-bench-"))
    song = tmp / "song.wav"
    render_song(song, args.seconds, seed=0)
    h = load_hierarchy(None, list(OPENMIC_TAGS))
    cfg = TrainConfig(method="resatt", arch=args.arch, pretrained="none")
    model = HierarchicalTagger(BackboneConfig(args.arch), "resatt", h)
    thresholds = {"fine": {n: 0.5 for n in h.fine_names}, "coarse": {n: 0.5 for n in h.coarse_names}}
    save_checkpoint(tmp / "best.pt", model, FrontendConfig(), asdict(cfg), epoch=0, best={}, thresholds=thresholds)
    tagger = Tagger.load(tmp / "best.pt", "cpu")
    tagger.tag(song, batch_size=args.batch)  # warm up
    best = float("inf")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        result = tagger.tag(song, batch_size=args.batch)
        best = min(best, time.perf_counter() - t0)
    windows = len(result["segments"])
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hmic", "predict", str(song), "--run", str(tmp / "best.pt")],
                   check=True, capture_output=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    cli_seconds = time.perf_counter() - t0
    macs = count(BackboneConfig(args.arch))["macs"]
    peak = matmul_peak(torch.device("cpu"))
    floor = windows * 2 * macs / peak
    print(f"device: {device_name(torch.device('cpu'))}; torch {torch.__version__}; {args.arch}, float32")
    print(f"{'quantity':<46}{'value':>12}")
    print(f"{'song length (s) / windows (10 s, hop 5 s)':<46}{f'{args.seconds:.0f} / {windows}':>12}")
    print(f"{'forward GFLOP per window':<46}{2 * macs / 1e9:>12.2f}")
    print(f"{'matmul peak GFLOP/s (same run)':<46}{peak / 1e9:>12.1f}")
    print(f"{'floor: windows x FLOP / peak (s)':<46}{floor:>12.2f}")
    print(f"{'Tagger.tag, in process (s)':<46}{best:>12.2f}")
    print(f"{'hmic predict command, wall (s)':<46}{cli_seconds:>12.2f}")
    print(f"ratio in-process / floor: {best / floor:.2f}; command / floor: {cli_seconds / floor:.2f}; "
          f"real-time factor: {args.seconds / best:.1f}x")


if __name__ == "__main__":
    main()
