"""The cost of depth: one training step of each head (forward, loss, backward) on the 2-level default
hierarchy and on the bundled 3-level tree, interleaved so that both see the same machine load; prints a
table of the median time per step and the ratio depth 3 / depth 2 (usage: python benchmarks/depth_cost.py
[--dim 2048] [--batch 32] [--repeats 200])."""
import argparse
import platform
import time

import numpy as np
import torch

from hmic.data.hierarchy import load_hierarchy
from hmic.models.heads import HEADS, build_head, hierarchical_loss

parser = argparse.ArgumentParser()
parser.add_argument("--dim", type=int, default=2048)
parser.add_argument("--batch", type=int, default=32)
parser.add_argument("--repeats", type=int, default=200)
args = parser.parse_args()
torch.set_num_threads(1)
two = load_hierarchy()
three = load_hierarchy("openmic-hornbostel-sachs", list(two.fine_names))
methods = [m for m in HEADS.names() if m != "audioset"]


def step_fn(method, h):
    torch.manual_seed(0)
    head = build_head(method, args.dim, h)
    z = torch.randn(args.batch, args.dim)
    ft = (torch.rand(args.batch, h.n_fine) > 0.8).float()
    ct = (torch.rand(args.batch, h.n_coarse) > 0.6).float()
    fm, cm = torch.ones_like(ft, dtype=torch.bool), torch.ones_like(ct, dtype=torch.bool)

    def step():
        head.zero_grad(set_to_none=True)
        hierarchical_loss(head(z), head, ft, fm, ct, cm, 0.8).backward()
    return step


print(f"CPU: {platform.processor() or platform.machine()}, 1 thread, batch {args.batch}, D {args.dim}, "
      f"{args.repeats} interleaved steps each")
print("| head | depth 2 (ms/step) | depth 3 (ms/step) | depth 3 / depth 2 |")
print("|---|---|---|---|")
for m in methods:
    steps = {d: step_fn(m, h) for d, h in ((2, two), (3, three))}
    times = {2: [], 3: []}
    for d in (2, 3):
        for _ in range(10):
            steps[d]()  # warm-up
    for _ in range(args.repeats):
        for d in (2, 3):
            t = time.perf_counter()
            steps[d]()
            times[d].append(time.perf_counter() - t)
    a, b = (1e3 * float(np.median(times[d])) for d in (2, 3))
    print(f"| {m} | {a:.3f} | {b:.3f} | {b / a:.2f} |")
