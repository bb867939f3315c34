"""CNN14 training throughput (clips/s at batch 16) and its fraction of the FLOP bound.

    python benchmarks/train_step.py [--arch cnn14] [--device auto] [--steps 20]

The FLOP bound: a training step costs about 3× the forward pass (forward + backward for activations
and weights); the forward pass of a 10-s clip is 2 × the backbone's multiply-adds (40.1 GFLOP for
cnn14; PANNs quotes 40.6). The peak is a large matmul measured in the same run, in the precision
the step uses (bf16 autocast on CUDA, float32 on CPU).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


from common import device_name, matmul_peak, sync  # noqa: E402
from hmic.models.backbones import BACKBONES, count  # noqa: E402
from hmic import BackboneConfig  # noqa: E402
from hmic.data.openmic import OPENMIC_TAGS  # noqa: E402
from hmic.devices import DEVICE_HELP, PRECISIONS, autocast, resolve_device  # noqa: E402
from hmic.models.heads import hierarchical_loss  # noqa: E402
from hmic import load_hierarchy  # noqa: E402
from hmic.models.model import HierarchicalModel  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="cnn14", choices=list(BACKBONES))
    ap.add_argument("--method", default="resatt")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="auto", help=DEVICE_HELP)
    ap.add_argument("--precision", default="auto", choices=PRECISIONS, help="the backbone's (auto: bf16 on CUDA)")
    ap.add_argument("--json", default="", help="also write the figures to this JSON file")
    args = ap.parse_args()
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    h = load_hierarchy(None, list(OPENMIC_TAGS))
    cfg = BackboneConfig(args.arch)
    model = HierarchicalModel(cfg, args.method, h).to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4)
    x = torch.randn(args.batch, 1001, 64, device=device) * 10 - 40
    ft = (torch.rand(args.batch, 20, device=device) < 0.3).float()
    fm = torch.rand(args.batch, 20, device=device) < 0.2
    ct, cm = (torch.rand(args.batch, 7, device=device) < 0.5).float(), torch.ones(args.batch, 7, dtype=torch.bool, device=device)

    def step() -> None:
        with autocast(device, args.precision):
            out = model(x)
        loss = hierarchical_loss(out, model.head, ft, fm, ct, cm, 0.8)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    seconds = time.perf_counter() - t0
    clips_per_s = args.batch * args.steps / seconds
    macs = count(cfg)["macs"]
    step_flop_per_clip = 3 * 2 * macs
    bf16 = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda")
    peak = matmul_peak(device, torch.bfloat16 if bf16 else torch.float32)
    achieved = clips_per_s * step_flop_per_clip
    print(f"device: {device_name(device)}; torch {torch.__version__}; precision: {'bf16 autocast' if bf16 else 'float32'}; channels-last")
    print(f"{'quantity':<44}{'value':>16}")
    print(f"{'arch / head / batch':<44}{f'{args.arch} / {args.method} / {args.batch}':>16}")
    print(f"{'forward GFLOP per 10-s clip':<44}{2 * macs / 1e9:>16.2f}")
    print(f"{'training throughput (clips/s)':<44}{clips_per_s:>16.1f}")
    print(f"{'achieved TFLOP/s (3x forward)':<44}{achieved / 1e12:>16.3f}")
    print(f"{'matmul peak TFLOP/s (same run)':<44}{peak / 1e12:>16.3f}")
    print(f"{'FLOP-bound throughput (clips/s)':<44}{peak / step_flop_per_clip:>16.1f}")
    print(f"fraction of the FLOP bound: {achieved / peak:.3f}")
    if args.json:
        report = {"device": device_name(device), "torch": str(torch.__version__), "arch": args.arch, "method": args.method,
                  "batch": args.batch, "precision": "bf16" if bf16 else "fp32", "clips_per_s": clips_per_s,
                  "achieved_tflops": achieved / 1e12, "matmul_peak_tflops": peak / 1e12,
                  "fraction_of_flop_bound": achieved / peak}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
