"""Featurize throughput against decode-only on the same clips and the same workers.

    python benchmarks/featurize.py --data-dir data/synth --clips 400 --workers 2

Prints clips/s of (a) decode only (soundfile → float32) and (b) the full front-end (decode, mono,
16 kHz Kaiser resampling, log-mel, float16), both through the same process pool, and their ratio
(target: ≥ 0.7). Renders a small stand-in dataset first if --data-dir does not exist.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


from hmic.audio.decoding import decode  # noqa: E402
from hmic import FrontendConfig  # noqa: E402
from hmic.audio.logmel import clip_features  # noqa: E402
from hmic.data.openmic import OpenMIC  # noqa: E402


def _init() -> None:
    import torch

    torch.set_num_threads(1)


def decode_only(path: str) -> int:
    audio, _ = decode(path)
    return audio.shape[1]


def full(path: str) -> int:
    return clip_features(path, FrontendConfig()).astype(np.float16).shape[0]


def timed(fn, paths: list[str], workers: int) -> float:
    with ProcessPoolExecutor(workers, initializer=_init) as pool:
        list(pool.map(fn, paths[: workers * 2]))  # warm up: imports, resampler kernels
        t0 = time.perf_counter()
        list(pool.map(fn, paths, chunksize=8))
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="data/bench-synth")
    ap.add_argument("--clips", type=int, default=400)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    root = Path(args.data_dir)
    if not root.exists():
        from hmic.data.synth.dataset import SynthOptions, synthesize

        synthesize(root, SynthOptions(clips=args.clips, seed=0), workers=args.workers)
    ds = OpenMIC.load(root)
    keys = sorted(ds.train_keys + ds.test_keys)[: args.clips]
    paths = [str(ds.audio_path(k)) for k in keys]
    n = len(paths)
    rows = []
    for name, fn in (("decode only", decode_only), ("featurize (full front-end)", full)):
        best = min(timed(fn, paths, args.workers) for _ in range(args.repeats))
        rows.append((name, n / best, best))
    print(f"{n} clips of {root}, {args.workers} worker(s), best of {args.repeats}")
    print(f"{'stage':<30}{'clips/s':>10}{'seconds':>10}")
    for name, rate, secs in rows:
        print(f"{name:<30}{rate:>10.1f}{secs:>10.2f}")
    ratio = rows[1][1] / rows[0][1]
    print(f"ratio featurize / decode-only: {ratio:.2f}  (target >= 0.70: {'met' if ratio >= 0.7 else 'NOT met'})")


if __name__ == "__main__":
    main()
