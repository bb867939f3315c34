"""Whether the compiled stack loads, checked once before long work starts (``hmic featurize``, ``train``,
``predict`` over PyTorch), so that a broken install is one clear error instead of every clip failing.

torchaudio's compiled library is built against one torch release: torchaudio 2.11.1 beside torch
2.11.0 fails to load (``undefined symbol: ...``). The fix names both versions and the pair to install;
in a checkout the pair is read from ``requirements.lock`` (the one place that pins them).
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import re
from functools import lru_cache
from pathlib import Path

from hmic.errors import HmicError

LOCK = Path(__file__).resolve().parent.parent / "requirements.lock"  # present in a checkout, not in a wheel


def installed_version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "(not installed)"


def locked_version(dist: str, lock: Path = LOCK) -> str | None:
    """The version ``requirements.lock`` pins for ``dist``, when hmic runs from a checkout that has one."""
    if not lock.is_file():
        return None
    m = re.search(rf"^{re.escape(dist)}==([^\s;\\]+)", lock.read_text(encoding="utf-8"), re.MULTILINE)
    return m.group(1) if m else None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _fix() -> str:
    torch_v, audio_v = locked_version("torch"), locked_version("torchaudio")
    if torch_v and audio_v:
        return (f"run 'make install' (it installs requirements.lock: torch {torch_v} / torchaudio {audio_v}), "
                f"or pip install 'torch=={torch_v}' 'torchaudio=={audio_v}'")
    torch_v = installed_version("torch")
    return f"install the torchaudio release of this torch: pip install 'torchaudio=={torch_v}' (or the pair from hmic's requirements.lock)"


def check_torch_stack(modules: tuple[str, ...] = ("torch", "torchaudio"), import_module=importlib.import_module) -> None:
    """Import each compiled module; the first that fails raises one HmicError naming the installed
    torch and torchaudio versions, the cause and the fix. ``import_module`` is replaceable for tests."""
    for name in modules:
        try:
            import_module(name)
        except Exception as e:  # ImportError, OSError (a library that does not load), RuntimeError
            raise HmicError(
                f"{name} cannot be loaded: torch {installed_version('torch')} with torchaudio "
                f"{installed_version('torchaudio')} ({_first_line(e)}). The two must be one release; {_fix()}"
            ) from None


@lru_cache(maxsize=1)
def require_torch_stack() -> None:
    """``check_torch_stack`` once per process (the commands call it before any work)."""
    check_torch_stack()
