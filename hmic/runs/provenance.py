"""Provenance: which code, which machine and which command made a run (``provenance.json`` in its folder).

Each time a run starts training, first or on resume, a *session* is appended to the file's list:

    started        UTC start time (ISO 8601)            kind     "start" or "resume"
    hmic           hmic's version                       code     {"commit", "dirty", "changes", "diff_sha256"}
                                                                 when hmic runs from a git checkout, else
                                                                 {"commit": null, "git": "not a git checkout"}
    python, torch, torchaudio, numpy, cuda, cudnn       versions (cuda/cudnn null on a build without them)
    machine        {"host", "cpu", "cpu_cores", "gpus": [model per visible GPU], "device": the run's --device}
    command        the exact command line (a list; ``command_line``: the same, shell-quoted)
    pid            the training process (with the host: how ``hmic runs`` tells a running run)
    config         the resolved training configuration this session ran with (config.json holds the
                   run's; a resume may differ in --device or --tracker)
    error          {"type", "message", "at"}, only when the session ended in an exception

The facts are gathered without ever failing a run: git missing, slow or refusing the folder gives a
reason instead of a commit. Nothing here imports torch until a session is gathered.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from hmic.fileio import read_json, write_json

PROVENANCE = "provenance.json"
GIT_TIMEOUT = 5.0  # seconds per git call: a hung network file system must not hold a run back
COMMAND_ENV = "HMIC_COMMAND_LINE"  # JSON list: the command line that launched a worker (Ray), if not our own
MAX_CHANGES = 20  # modified paths listed in a session (the count is always complete)
NOT_A_CHECKOUT = "not a git checkout"

# run folders whose session this process opened (``record_session``): only these record a failure
_OPENED: set[str] = set()


def package_root() -> Path:
    """The folder holding the ``hmic`` package: a checkout's top when hmic runs from one."""
    return Path(__file__).resolve().parent.parent.parent


def _git(root: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, timeout=GIT_TIMEOUT, check=True,
                         env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})  # read-only: never take the index lock
    return out.stdout.decode("utf-8", "replace")


def code_state(root: Path | None = None) -> dict:
    """The commit of the checkout hmic runs from and whether its tree differs from it (tracked files
    changed, or new files that .gitignore does not ignore). A reason instead when there is no checkout
    (an installed package), no git, or git fails."""
    root = Path(root) if root is not None else package_root()
    try:
        top = Path(_git(root, "rev-parse", "--show-toplevel").strip()).resolve()
        if top != root.resolve():  # e.g. a virtual environment inside some other repository
            return {"commit": None, "git": NOT_A_CHECKOUT}
        commit = _git(root, "rev-parse", "HEAD").strip()
        changes = [line[3:] for line in _git(root, "status", "--porcelain").splitlines() if line.strip()]
        diff = _git(root, "diff", "HEAD", "--binary") if changes else ""
    except FileNotFoundError:
        return {"commit": None, "git": "git is not installed"}
    except subprocess.TimeoutExpired:
        return {"commit": None, "git": f"git did not answer within {GIT_TIMEOUT:g} s"}
    except subprocess.CalledProcessError as e:
        text = e.stderr.decode("utf-8", "replace").strip().splitlines() if e.stderr else []
        if any("not a git repository" in line for line in text):
            return {"commit": None, "git": NOT_A_CHECKOUT}
        return {"commit": None, "git": f"git failed: {text[-1] if text else e.returncode}"}
    except OSError as e:
        return {"commit": None, "git": f"git could not run: {e}"}
    state = {"commit": commit, "dirty": bool(changes), "changes": len(changes)}
    if changes:
        state["changed_paths"] = changes[:MAX_CHANGES]
        state["diff_sha256"] = hashlib.sha256(diff.encode("utf-8", "surrogateescape")).hexdigest()
    return state


def cpu_model() -> str:
    """The CPU's marketing name (/proc/cpuinfo on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def machine(device: str | None = None) -> dict:
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {"host": socket.gethostname(), "cpu": cpu_model(), "cpu_cores": os.cpu_count(),
            "cpu_cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "gpus": gpus, "gpu_count": len(gpus), "device": device}


def command() -> tuple[list[str], list[str] | None]:
    """(the command line that started the work, this process's own when it differs: a Ray worker's)."""
    launched = os.environ.get(COMMAND_ENV)
    if launched:
        with contextlib.suppress(ValueError):
            return list(json.loads(launched)), list(sys.argv)
    return list(sys.argv), None


def session(kind: str = "start", device: str | None = None) -> dict:
    """The facts of one training session (see the module's docstring), without its configuration."""
    import numpy
    import torch

    from hmic import __version__

    argv, worker = command()
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    out = {"kind": kind, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "hmic": __version__,
           "code": code_state(), "python": platform.python_version(), "torch": str(torch.__version__),
           "torchaudio": _version("torchaudio"), "numpy": str(numpy.__version__), "cuda": torch.version.cuda,
           "cudnn": cudnn, "machine": machine(device), "command": argv, "command_line": shlex.join(argv),
           "pid": os.getpid()}
    if worker is not None:
        out["worker_command"] = worker
    return out


def sessions(folder: str | Path) -> list[dict]:
    """The sessions recorded in a run folder, oldest first ([] for a run from before provenance)."""
    path = Path(folder) / PROVENANCE
    if not path.exists():
        return []
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return []
    return list(data.get("sessions", [])) if isinstance(data, dict) else []


def record_session(folder: str | Path, *, resumed: bool, config: dict | None = None) -> dict:
    """Append this process's session, run with ``config`` (the resolved TrainConfig as a dict), to
    ``folder``'s provenance.json (atomically); returns it."""
    folder = Path(folder)
    entry = session("resume" if resumed else "start", (config or {}).get("device"))
    if config is not None:
        entry["config"] = config
    write_json(folder / PROVENANCE, {"sessions": [*sessions(folder), entry]})
    _OPENED.add(str(folder.resolve()))
    return entry


def record_error(folder: str | Path, error: BaseException) -> None:
    """Write ``error`` into the current session of a run this process opened (the run then reads as failed)."""
    folder = Path(folder)
    if str(folder.resolve()) not in _OPENED or not (folder / PROVENANCE).exists():
        return  # refused before it started (another configuration, --resume missing): not this run's failure
    found = sessions(folder)
    if not found:
        return
    text = str(error).strip() or type(error).__name__
    found[-1]["error"] = {"type": type(error).__name__, "message": text,
                          "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_json(folder / PROVENANCE, {"sessions": found})


@contextlib.contextmanager
def failures_recorded(*folders: str | Path) -> Iterator[None]:
    """An exception raised inside is written into each opened run's session, then raised on. A Ctrl-C
    (KeyboardInterrupt) is not a failure: the run reads as interrupted."""
    try:
        yield
    except Exception as e:
        for folder in folders:
            with contextlib.suppress(OSError):
                record_error(folder, e)
        raise
    finally:
        for folder in folders:
            _OPENED.discard(str(Path(folder).resolve()))


def code_label(state: dict | None) -> str:
    """A session's code in a few characters: ``1a2b3c4d``, ``1a2b3c4d+modified``, or the reason there is none."""
    if not state:
        return "unrecorded"
    if not state.get("commit"):
        return state.get("git", NOT_A_CHECKOUT)
    return state["commit"][:8] + ("+modified" if state.get("dirty") else "")


def run_code(folder: str | Path) -> tuple[str, bool]:
    """(the code label of a run, whether it is reproducible from a commit): the labels of its sessions
    joined with → when the code changed between them (resumed after a checkout)."""
    labels = list(dict.fromkeys(code_label(s.get("code")) for s in sessions(folder)))
    if not labels:
        return "unrecorded", False
    clean = all(not s.get("code", {}).get("dirty") and s.get("code", {}).get("commit") for s in sessions(folder))
    return "→".join(labels), clean


def mixed_code_warning(folders: list) -> str | None:
    """One line when runs that are combined (``hmic evaluate``, ``hmic table``) come from different commits
    or from modified trees; None when they all come from one clean commit (or none records its code)."""
    labels: dict[str, int] = {}
    for folder in folders:
        label, _ = run_code(getattr(folder, "folder", folder))
        labels[label] = labels.get(label, 0) + 1
    known = {k: v for k, v in labels.items() if k != "unrecorded"}
    modified = [k for k in known if "modified" in k]
    if len(labels) <= 1 and not modified:
        return None
    if not known:
        return None
    parts = ", ".join(f"{n} run{'s' if n > 1 else ''} at {label}" for label, n in sorted(labels.items(), key=lambda kv: -kv[1]))
    why = "different code" if len(labels) > 1 else "a modified working tree"
    return f"warning: the runs combined here come from {why} ({parts}); see each run's {PROVENANCE}"
