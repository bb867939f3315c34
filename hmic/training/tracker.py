"""`hmic train --tracker tensorboard`: each run's per-epoch curves as TensorBoard event files in
``<run>/tensorboard/``, so that ``tensorboard --logdir runs`` shows a whole grid (docs/tracking.md).

The tracker is fed the very row appended to ``metrics.jsonl`` (``log_epoch``), so the curves and the file
never disagree; the step is the epoch counted from 1 (``metrics.jsonl``'s ``epoch`` + 1). With the tracker
on, validation also scores its predictions (macro ROC-AUC and PR-AUC per level, ``validation_scores``):
those go into the row, hence into ``metrics.jsonl`` as well. The run's method, λ, seed and protocol are
written as hyper-parameters (TensorBoard's HParams view). Off by default: TensorBoard is an optional
extra (``pip install 'hmic[tensorboard]'``), and a run is auditable without it.
"""

from __future__ import annotations

import atexit
from pathlib import Path

import numpy as np

from hmic.errors import HmicError

TRACKERS = ("none", "tensorboard")
EVENTS = "tensorboard"  # the event files' folder inside a run folder
# metrics.jsonl key -> TensorBoard tag (a row holds the ones its epoch has; peak memory on CUDA only)
SCALARS = {
    "train_loss": "train/loss", "lr": "train/lr",
    "val_fine_loss": "val/fine_loss", "val_coarse_loss": "val/coarse_loss",
    "val_fine_roc_auc": "val/fine_roc_auc", "val_fine_pr_auc": "val/fine_pr_auc",
    "val_coarse_roc_auc": "val/coarse_roc_auc", "val_coarse_pr_auc": "val/coarse_pr_auc",
    "data_seconds": "seconds/data", "compute_seconds": "seconds/compute",
    "validation_seconds": "seconds/validation", "checkpoint_seconds": "seconds/checkpoint",
    "seconds": "seconds/epoch", "peak_memory_bytes": "memory/peak_bytes",
}
CLIPS_PER_SECOND = "speed/train_clips_per_second"  # train_clips / (data_seconds + compute_seconds)
HPARAM_METRICS = ("val/fine_loss", "val/coarse_loss", "val/fine_roc_auc", "val/fine_pr_auc",
                  "val/coarse_roc_auc", "val/coarse_pr_auc")
INSTALL = "pip install 'hmic[tensorboard]'"


def require_tracker(name: str) -> None:
    """Refuse an unknown tracker, and a missing package, in one line naming the extra."""
    if name not in TRACKERS:
        raise HmicError(f"--tracker must be one of {', '.join(TRACKERS)}, got {name!r}")
    if name == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise HmicError(f"--tracker tensorboard needs TensorBoard, which is not installed: {INSTALL}") from None


def validation_scores(fine_probs: np.ndarray, coarse_probs: np.ndarray, part) -> dict:
    """Macro ROC-AUC and PR-AUC per level of a run's validation probabilities on ``part`` (observed entries;
    tags with one class left out, as ``hmic evaluate`` does): ``val_{level}_{roc_auc,pr_auc}``."""
    from hmic.evaluation.metrics import score_level

    out = {}
    for level, probs in (("fine", fine_probs), ("coarse", coarse_probs)):
        targets, mask = getattr(part, f"{level}_targets"), getattr(part, f"{level}_mask")
        k = probs.shape[1]
        macro = score_level(probs, targets, mask, np.full(k, 0.5), [str(j) for j in range(k)]).macro
        out[f"val_{level}_roc_auc"], out[f"val_{level}_pr_auc"] = macro["roc_auc"], macro["pr_auc"]
    return out


def hparams(cfg) -> dict:
    weights = {"level_weights": cfg.level_weights} if cfg.level_weights else {}  # absent: λ stands for them
    return {"method": cfg.method, "lambda": float(cfg.lam), **weights, "seed": int(cfg.seed), "protocol": cfg.protocol,
            "arch": cfg.arch}


class TensorBoardTracker:
    """One run's event files: opened at the epoch a session starts (``purge_step`` hides the events a
    killed session wrote past its last checkpoint), with the run's hyper-parameters written first."""

    def __init__(self, folder: Path, cfg, first_step: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams as hparams_summaries
        except ImportError:
            raise HmicError(f"--tracker tensorboard needs TensorBoard, which is not installed: {INSTALL}") from None
        self.folder = Path(folder) / EVENTS
        self.writer = SummaryWriter(log_dir=str(self.folder), purge_step=first_step, flush_secs=30)
        for summary in hparams_summaries(hparams(cfg), {tag: None for tag in HPARAM_METRICS}):
            self.writer.file_writer.add_summary(summary)
        self.last_step = first_step - 1

    def log_epoch(self, row: dict) -> None:
        step = int(row["epoch"]) + 1
        for key, tag in SCALARS.items():
            if row.get(key) is not None:
                self.writer.add_scalar(tag, float(row[key]), step)
        busy = float(row.get("data_seconds", 0)) + float(row.get("compute_seconds", 0))
        if row.get("train_clips") and busy > 0:
            self.writer.add_scalar(CLIPS_PER_SECOND, row["train_clips"] / busy, step)
        self.writer.flush()  # live curves: each epoch is on disk when the next starts
        self.last_step = step

    def close(self) -> None:
        self.writer.close()


_OPEN: dict[str, TensorBoardTracker] = {}


def log_epoch(run, cfg, row: dict) -> None:
    """Give the tracker of ``cfg`` (none: nothing) the row just appended to ``run``'s metrics.jsonl."""
    if getattr(cfg, "tracker", "none") == "none":
        return
    key, step = str(Path(run.folder).resolve()), int(row["epoch"]) + 1
    tracker = _OPEN.get(key)
    if tracker is not None and (step <= tracker.last_step or not tracker.folder.exists()):
        close_tracker(run)  # the run started again (--force, or a restart from scratch): a new session
        tracker = None
    if tracker is None:
        tracker = _OPEN[key] = TensorBoardTracker(run.folder, cfg, step)
    tracker.log_epoch(row)


def close_tracker(run) -> None:
    tracker = _OPEN.pop(str(Path(run.folder).resolve()), None)
    if tracker is not None:
        tracker.close()


@atexit.register
def _close_all() -> None:
    for tracker in list(_OPEN.values()):
        tracker.close()
    _OPEN.clear()
