"""How often bf16 and fp32 make the same (window, tag) presence decision, on a trained run.

    python benchmarks/bf16_agreement.py RUN [AUDIO...] [--seconds 180] [--emulated]

Without AUDIO a song is rendered (`hmic synth-song`, seed 0). ``--emulated`` allows a CPU without
native bf16 (PyTorch emulates it: the same bf16 rounding, many times slower).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import hmic.devices  # noqa: E402
from hmic.predict import Tagger  # noqa: E402
from hmic.synth.song import render_song  # noqa: E402
from predict import decisions  # noqa: E402


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
        files = [Path(tempfile.mkdtemp(prefix="hmic-agree-")) / "song.wav"]
        render_song(files[0], args.seconds, seed=0)
    fp32 = Tagger.load(args.run, args.device, "fp32")
    bf16 = Tagger.load(args.run, args.device, "bf16")
    same = total = 0
    worst = 0.0
    for (_, a, _), (_, b, _) in zip(fp32.stream(files), bf16.stream(files)):
        da, db = decisions(a), decisions(b)
        same += int((da == db).sum())
        total += da.size
        for sa, sb in zip(a["segments"], b["segments"]):
            for level in ("fine", "coarse"):
                worst = max(worst, max(abs(sa[level][t] - sb[level][t]) for t in sa[level]))
    print(f"{args.run}: {len(files)} file(s), {total} (window, tag) decisions; bf16 = fp32 for "
          f"{100 * same / total:.2f}% (goal >= 99%); max |p_bf16 - p_fp32| = {worst:.4f}")


if __name__ == "__main__":
    main()
