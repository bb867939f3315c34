"""Which way of running full-size CNN14 in float32 is fastest on this CPU, side by side in one run.

    OMP_NUM_THREADS=2 python benchmarks/cpu_layouts.py [--batch 8] [--repeats 3] [--profile]

The backbone alone (random weights, non-trivial BatchNorm statistics) on one batch of 10-s log-mel
windows. Rows: eager NCHW (the benchmark's reference layout), eager channels-last, BatchNorm folded
into the convolutions, then what ``Tagger.load`` does (``Backbone.for_inference``: folded BatchNorm and
the last block's convolutions as matrix products, ``NarrowConv``) in both layouts, and with ``--jit``
TorchScript freeze + optimize_for_inference (its preparation time is printed: too slow for a command's
start-up, shown as a ceiling). ``--profile`` prints the top operators of hmic's row and its
convolutions by shape.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

from hmic.models.backbones import Cnn14  # noqa: E402
from hmic import BackboneConfig  # noqa: E402


def best_of(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--jit", action="store_true", help="add the TorchScript row (slow to prepare)")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = Cnn14(BackboneConfig("cnn14")).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
        x = torch.randn(args.batch, 1001, 64) * 10 - 40
        want = model(x)
        variants = {"eager NCHW": model,
                    "eager channels-last": copy.deepcopy(model).to(memory_format=torch.channels_last),
                    "BN folded, channels-last": copy.deepcopy(model).for_inference(narrow=False).to(memory_format=torch.channels_last),
                    "hmic: + last block as GEMM (NCHW)": copy.deepcopy(model).for_inference(),
                    "hmic: + last block as GEMM": copy.deepcopy(model).for_inference().to(memory_format=torch.channels_last)}
        if args.jit:
            t0 = time.perf_counter()
            variants["TorchScript optimize_for_inference"] = torch.jit.optimize_for_inference(
                torch.jit.freeze(torch.jit.trace(copy.deepcopy(model), x[:2])))
            print(f"TorchScript preparation: {time.perf_counter() - t0:.1f} s")
        rows = {}
        for name, m in variants.items():
            diff = (m(x) - want).abs().max().item()
            rows[name] = (best_of(lambda: m(x), args.repeats), diff)
        print(f"CPU: {torch.get_num_threads()} threads, batch {args.batch}, torch {torch.__version__}")
        print(f"{'variant':<38}{'seconds':>9}{'x NCHW':>9}{'max |diff|':>12}")
        for name, (sec, diff) in rows.items():
            print(f"{name:<38}{sec:>9.3f}{sec / rows['eager NCHW'][0]:>9.2f}{diff:>12.1e}")
        if args.profile:
            m = variants["hmic: + last block as GEMM"]
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
                m(x)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))
            convs = [e for e in prof.key_averages(group_by_input_shape=True) if e.key in ("aten::mkldnn_convolution", "aten::addmm")]
            print("convolutions (and the GEMM of the last block, as addmm) by input shape: seconds")
            for e in sorted(convs, key=lambda e: -e.self_cpu_time_total):
                print(f"  {e.input_shapes[0] if e.input_shapes else '?'} x {e.count}: {e.self_cpu_time_total / 1e6:.3f}")


if __name__ == "__main__":
    main()
