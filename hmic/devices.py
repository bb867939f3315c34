"""The one device resolver (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``) every command and
benchmark uses, and the mixed-precision context of the model's backbone. Importing it does not import torch.

Precision, one meaning for training, ``hmic embed`` and ``hmic predict``: ``auto`` runs the backbone in bf16
autocast where the device computes bf16 natively (CUDA; a CPU with avx512_bf16, AMX or Arm's bf16) and
in float32 elsewhere; ``bf16`` asks for it (refused on a CPU that would only emulate it, many times
slower); ``fp32`` turns it off. Chosen from measurement: on a 2-core CPU with avx512_bf16, bf16 tagged
songs in 0.38× the PANNs reference's time against 0.72× in float32 with the same tags, and embedded 2.1×
faster (docs, "Measurements"). The head, the loss and every saved probability are float32 whatever the
precision (``HierarchicalModel``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from hmic.errors import HmicError

if TYPE_CHECKING:
    import torch

DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps"
PRECISIONS = ("auto", "bf16", "fp32")
_PATTERN = re.compile(r"^(auto|cpu|cuda|mps|cuda:\d+)$")


def check_device_name(name: str) -> str:
    """Refuse a device string that is none of DEVICE_HELP (no availability check)."""
    if not isinstance(name, str) or not _PATTERN.match(name):
        raise HmicError(f"--device {name!r} is not a device; use {DEVICE_HELP}")
    return name


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when visible, else CPU. A named device that is missing is a one-line error."""
    import torch

    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        backend = getattr(torch.backends, "mps", None)
        if backend is None or not backend.is_available():
            raise HmicError("--device mps: no Apple-silicon (MPS) device is available here; use --device cpu")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise HmicError(f"--device {name}: no CUDA device is visible (torch.cuda.is_available() is False); "
                        "use --device cpu or auto")
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise HmicError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible "
                        f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return device


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise HmicError(f"--precision {precision!r} is unknown; use {', '.join(PRECISIONS)}")
    return precision


def cpu_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (x86 avx512_bf16 or AMX, Arm bf16). Without it
    PyTorch emulates bf16, many times slower than float32."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """``bf16`` or ``fp32`` on ``device`` (``auto``: bf16 on CUDA and on a CPU with native bf16, else fp32).
    bf16 on a CPU that would only emulate it is refused, since it would be slower, not faster."""
    check_precision(precision)
    if precision == "auto":
        return "bf16" if device.type == "cuda" or (device.type == "cpu" and cpu_native_bf16()) else "fp32"
    if precision == "bf16" and device.type == "cpu" and not cpu_native_bf16():
        raise HmicError("--precision bf16: this CPU has no native bf16 (no avx512_bf16 or AMX), so PyTorch "
                        "would emulate it, slower than float32; use --precision fp32 (or a GPU)")
    return precision


def autocast(device: torch.device, precision: str = "auto"):
    """The backbone's autocast context: bf16 where ``precision`` resolves to it (``resolve_precision``)."""
    import torch

    if resolve_precision(device, precision) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


_FREED_MEMORY_KEPT = False


def keep_freed_memory() -> bool:
    """Opt-in, process-wide: ask glibc's malloc to keep large freed blocks for reuse instead of handing
    them back to the system. A frozen stack's step allocates its gradients afresh (resatt's stack of 40
    over 2,048-d embeddings: 46 MB for one weight); by default glibc maps every block over 32 MB anew and
    unmaps it when freed, so each step pays the page faults of fresh memory (a third of that step on a
    2-core CPU; docs, "Measurements"). It changes no arithmetic, but it changes the whole process, so the
    library never calls it: ``hmic train --protocol frozen`` and its Ray tasks do, and so may a caller
    that trains frozen stacks from Python. Returns whether it took effect (False where the C library has
    no ``mallopt``, i.e. not glibc: nothing changes there)."""
    global _FREED_MEMORY_KEPT
    if _FREED_MEMORY_KEPT:
        return True
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    _FREED_MEMORY_KEPT = bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, 1 << 31))
    return _FREED_MEMORY_KEPT


def freed_memory_kept() -> bool:
    """Whether this process opted in to ``keep_freed_memory``."""
    return _FREED_MEMORY_KEPT
