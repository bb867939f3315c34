"""Shared by the benchmarks: the paper's grid (Makefile's LAMBDAS and SEEDS) and a matrix-multiply
peak measured in the same process."""

from __future__ import annotations

import time

import torch

from hmic.models.heads import head_class

LAMBDAS = [0.7, 0.75, 0.8, 0.85, 0.9]
SEEDS = 8


def lambdas_of(method: str) -> list[float]:
    """The λ values of the paper's grid that ``method`` trains (one for flat: it has no coarse loss)."""
    return head_class(method).lambdas_for(LAMBDAS)


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, n: int | None = None, repeats: int = 10) -> float:
    """Best FLOP/s of an n×n @ n×n matmul on ``device`` (2·n³ FLOP each)."""
    # CPUs without native bf16 (no avx512_bf16/AMX) multiply bf16 a hundred times slower: a smaller n
    n = n or (8192 if device.type == "cuda" else 2048 if dtype != torch.bfloat16 else 512)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
