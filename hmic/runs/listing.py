"""`hmic runs`: where every run under a folder stands, from its files alone. Reads only.

A run's state:

    finished       done.json exists
    failed         its last session (provenance.json) ended in an exception; the error is named
    running        its writer lock names a live process of this host that started before it took the lock
                   (``verified`` False when the run trains on another host: the lock is all there is)
    interrupted    anything else that has started: killed, Ctrl-C, or stopped; ``hmic train ... --resume``
                   continues it
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from hmic.errors import HmicError
from hmic.fileio import read_json
from hmic.runs.provenance import PROVENANCE, run_code, sessions
from hmic.runs.run import Run

STATES = ("finished", "running", "interrupted", "failed")
ERROR_CHARS = 40  # of a failed run's error in the table (--json has all of it)


@dataclass
class RunStatus:
    run: str
    method: str
    lam: float
    seed: int
    protocol: str
    state: str
    epochs_done: int
    epochs: int
    best_epoch: int | None  # counted from 0, as in done.json and metrics.jsonl
    best_val_fine_loss: float | None
    wall_seconds: float  # summed over the epochs written (training, validation and checkpoints)
    tuned: bool
    commit: str  # the code label of its sessions (``hmic.runs.provenance.code_label``)
    reproducible: bool  # every session ran from a clean checkout of a commit
    host: str | None = None
    error: str | None = None
    verified: bool = True  # False: "running" read from a lock written on another host
    last_update_seconds: float | None = None  # since metrics.jsonl (or the config) last changed

    def to_dict(self) -> dict:
        """The fields, with ``lambda`` for ``lam`` (as done.json names it)."""
        return {("lambda" if k == "lam" else k): v for k, v in asdict(self).items()}

    @property
    def state_text(self) -> str:
        """The state as the table shows it: with the epoch, the error, or the host."""
        if self.state == "running":
            where = "" if self.verified else f" on {self.host}?"
            return f"running{where}, epoch {min(self.epochs_done + 1, self.epochs)}/{self.epochs}"
        if self.state == "interrupted":
            return f"interrupted after {self.epochs_done}/{self.epochs} epochs"
        if self.state == "failed":
            first = (self.error or "?").splitlines()[0]
            return f"failed: {first if len(first) <= ERROR_CHARS else first[:ERROR_CHARS - 1] + '…'}"
        return self.state


def _process_started(pid: int) -> float | None:
    """The UNIX time process ``pid`` started (Linux /proc), None where that cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def lock_holder(run: Run) -> int | None:
    """The PID the run's writer lock names (written while held, emptied on release; a killed holder
    leaves it behind), None when nobody holds it."""
    try:
        text = run.lock_path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _running(run: Run, last: dict | None) -> tuple[bool, bool]:
    """(running, verified) for a run that is neither finished nor failed."""
    pid = lock_holder(run)
    if pid is None:
        return False, True
    host = (last or {}).get("machine", {}).get("host")
    if host is not None and host != socket.gethostname():
        return True, False  # another node of a cluster: its lock is all this host can see
    if not _alive(pid):
        return False, True
    started = _process_started(pid)
    try:
        written = run.lock_path.stat().st_mtime  # the holder writes its PID when it takes the lock
    except OSError:
        return False, True
    # a process that started after the lock was written is a later one that was given the same PID
    return started is None or started <= written + 2.0, True


def run_status(run: Run) -> RunStatus:
    found = sessions(run.folder)
    last = found[-1] if found else None
    # a run that failed before writing config.json (its data missing, say) has its session's
    config = run.config() if run.started else dict((last or {}).get("config") or {})
    rows = run.metrics()
    epochs = int(config.get("epochs", 0))
    best_epoch, best_loss = None, None
    if run.finished:
        done = read_json(run.done_path)
        best_epoch, best_loss = done.get("best_epoch"), done.get("best_val_fine_loss")
    elif rows:
        best = min(rows, key=lambda r: r.get("val_fine_loss", float("inf")))  # the first minimum, as training keeps
        best_epoch, best_loss = best.get("epoch"), best.get("val_fine_loss")
    error, verified = None, True
    if run.finished:
        state = "finished"
    elif last is not None and "error" in last:
        state, error = "failed", last["error"].get("message", "?")
    else:
        running, verified = _running(run, last)
        state = "running" if running else "interrupted"
    commit, reproducible = run_code(run.folder)
    touched = max((p.stat().st_mtime for p in (run.metrics_path, run.config_path) if p.exists()), default=None)
    return RunStatus(
        run=str(run.folder), method=str(config.get("method")), lam=float(config.get("lam", float("nan"))),
        seed=int(config.get("seed", -1)), protocol=str(config.get("protocol", "finetune")), state=state,
        epochs_done=len({r["epoch"] for r in rows if "epoch" in r}), epochs=epochs, best_epoch=best_epoch,
        best_val_fine_loss=best_loss,
        wall_seconds=round(sum(float(r.get("seconds", 0)) + float(r.get("checkpoint_seconds", 0)) for r in rows), 3),
        tuned=run.tuned, commit=commit, reproducible=reproducible,
        host=(last or {}).get("machine", {}).get("host"), error=error, verified=verified,
        last_update_seconds=round(time.time() - touched, 1) if touched is not None else None)


def is_run_folder(folder: Path) -> bool:
    """A folder with the config.json of a training run (method and seed), or a provenance.json whose
    session names one."""
    config = folder / "config.json"
    if config.is_file():
        try:
            data = read_json(config)
        except (OSError, ValueError):
            return False
    else:
        found = sessions(folder)
        data = found[-1].get("config") if found else None
    return isinstance(data, dict) and "method" in data and "seed" in data


def list_runs(folder: str | Path) -> list[RunStatus]:
    """Every run below ``folder`` (any depth, or ``folder`` itself), in path order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HmicError(f"{folder} is not a folder; give the runs folder (hmic train's --runs-dir)")
    candidates = sorted({p.parent for name in ("config.json", PROVENANCE) for p in folder.rglob(name)})
    return [run_status(Run(d)) for d in candidates if is_run_folder(d)]


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
