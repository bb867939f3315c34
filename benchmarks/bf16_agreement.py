"""How often bf16 and fp32 make the same (window, tag) presence decision, on a trained run.

    python benchmarks/bf16_agreement.py RUN [AUDIO...] [--seconds 180] [--device cpu] [--emulated]

Without AUDIO a song is rendered (`hmic synth-song`, seed 0). ``--emulated`` allows a CPU without
native bf16 (PyTorch emulates it: the same bf16 rounding, many times slower). Besides the agreement it
prints where the disagreements lie (how close the fp32 probability was to the threshold), the
probability differences, the time of each precision, and the same for a variant that keeps the first
convolution block in float32 (the block that sees the log-mel in dB).
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent

import hmic.devices  # noqa: E402
from hmic import FileTagger as Tagger  # noqa: E402
from hmic.data.synth.song import render_song  # noqa: E402
from predict import probabilities  # noqa: E402


def first_block_in_fp32(tagger: Tagger) -> Tagger:
    block = tagger.runner.model.backbone.conv_block1
    forward = block.forward

    def fp32_forward(x, pool):
        with torch.autocast(x.device.type, enabled=False):
            return forward(x.float(), pool)

    block.forward = fp32_forward
    return tagger


def run(tagger: Tagger, files: list[Path], device: str) -> tuple[list[dict], float]:
    for _ in tagger.stream(files[:1]):  # warm-up
        pass
    t0 = time.perf_counter()
    results = [r for _, r, _ in tagger.stream(files)]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return results, time.perf_counter() - t0


def compare(name: str, a: list[dict], b: list[dict]) -> None:
    pa, pb, thresholds = [], [], None
    for ra, rb in zip(a, b):
        x, thresholds = probabilities(ra)
        pa.append(x)
        pb.append(probabilities(rb)[0])
    pa, pb = np.concatenate(pa), np.concatenate(pb)
    da, db = pa >= thresholds, pb >= thresholds
    flips = da != db
    margin = np.abs(pa - thresholds)[flips]
    diff = np.abs(pa - pb)
    print(f"{name}: {da.size} (window, tag) decisions; equal to fp32 for {100 * (1 - flips.mean()):.2f}% "
          f"(goal >= 99%); |p - p_fp32| max {diff.max():.4f}, mean {diff.mean():.5f}; "
          f"decisions within 0.01 / 0.02 of the threshold in fp32: {100 * (np.abs(pa - thresholds) < 0.01).mean():.2f}% / "
          f"{100 * (np.abs(pa - thresholds) < 0.02).mean():.2f}%; the flipped ones were that close: "
          f"{int((margin < 0.01).sum())} / {int((margin < 0.02).sum())} of {int(flips.sum())}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("audio", nargs="*", type=Path)
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--emulated", action="store_true")
    args = ap.parse_args()
    if args.emulated:
        hmic.devices.cpu_native_bf16 = lambda: True
    files = args.audio
    if not files:
        folder = Path(tempfile.mkdtemp(prefix="hmic-agree-"))
        atexit.register(shutil.rmtree, folder, True)
        files = [folder / "song.wav"]
        render_song(files[0], args.seconds, seed=0)
    print(f"{args.run}: {len(files)} file(s) on {args.device} ({torch.get_num_threads()} threads)")
    fp32, t32 = run(Tagger.load(args.run, args.device, "fp32"), files, args.device)
    bf16, t16 = run(Tagger.load(args.run, args.device, "bf16"), files, args.device)
    mixed, tmix = run(first_block_in_fp32(Tagger.load(args.run, args.device, "bf16")), files, args.device)
    compare("bf16", fp32, bf16)
    compare("bf16, first block fp32", fp32, mixed)
    print(f"seconds: fp32 {t32:.2f}, bf16 {t16:.2f} ({t16 / t32:.2f}x), bf16 with first block fp32 {tmix:.2f} "
          f"({tmix / t32:.2f}x)")


if __name__ == "__main__":
    main()
