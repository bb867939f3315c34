"""The one epoch loop of every training run, fine-tuned alone or trained in a frozen stack.

A run being trained is a ``RunState``: its folder, model, config, best record and metrics history. It
starts or resumes from ``last.pt`` (``RunState.begin``), commits each epoch (``RunState.commit``: best.pt
when the validation fine loss improved, then last.pt, then the metrics row) and ends with its best
checkpoint's predictions and ``done.json`` (``RunState.finish``). A run of zero epochs (a head that comes
trained, ``--method audioset --epochs 0``) keeps its model as it is (``RunState.keep_untrained``).

What trains is a ``Trainer``: one run with its optimiser (``hmic.training.finetune``) or a stack of runs
sharing one optimiser (``hmic.training.frozen``). ``train_epochs`` drives either through the same epochs:
train, validate every run, commit every run, report progress, stop for a simulated interruption.

The best epoch is the one with the lowest validation fine-level loss, at any depth: the fine level is the
hierarchy's leaves, the tags the dataset labels (every inner node's target derives from them), so a
deeper tree changes what is trained, not what the run is selected on; at depth 2 it is the paper's rule.

A killed run continues from last.pt and ends bit-identical to an uninterrupted one on the same machine:
the model, the optimiser, the scheduler position and the random streams are all in it.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Protocol

import numpy as np
import torch

from hmic.errors import HmicError
from hmic.evaluation.metrics import masked_bce
from hmic.models.checkpoint import read_state, save_checkpoint
from hmic.models.inference import infer
from hmic.models.model import HierarchicalModel
from hmic.runs.run import PREDICTIONS_VERSION, Run
from hmic.runs.trained_on import record_training_data
from hmic.training.config import TrainConfig
from hmic.training.data import SplitPart, TrainingData, batches
from hmic.training.tracker import close_tracker, log_epoch, validation_scores

NO_BEST = {"val_fine_loss": float("inf"), "epoch": -1}


# ----------------------------------------------------------------------------------------------
# The schedule and the random streams of a run


def lr_at(step: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Linear warm-up over warmup_epochs, then cosine decay to 0 at the end (or constant)."""
    total = cfg.epochs * steps_per_epoch
    warm = cfg.warmup_epochs * steps_per_epoch
    if warm > 0 and step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - warm) / max(1.0, total - warm)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def steps_per_epoch(data: TrainingData, cfg: TrainConfig) -> int:
    """Batches per epoch over the train part (at most ``cfg.limit_batches``); an empty part is an error."""
    n_train = len(data.parts["train"].keys)
    if n_train == 0:
        raise HmicError(f"the train part of the split is empty (0 usable clips) in {data.store.folder}; check "
                        "'hmic split' and the store's failures.csv")
    steps = math.ceil(n_train / cfg.batch_size)
    return min(steps, cfg.limit_batches) if cfg.limit_batches else steps


# The random streams of a run, each drawn apart from torch's global generator (which initialises the weights
# and draws fine-tuning's dropout and SpecAugment), so that none shifts another. One scheme, as everywhere in
# hmic (the split, the stand-in): numpy's SeedSequence of (run seed, stream, epoch).
STREAMS = {"order": 0, "augment": 1, "dropout": 2, "head": 3}


def stream_seed(seed: int, stream: str, epoch: int = 0) -> int:
    """A 64-bit seed for one stream of one epoch of a run: SeedSequence([seed, stream, epoch])."""
    return int(np.random.SeedSequence([seed, STREAMS[stream], epoch]).generate_state(1, np.uint64)[0])


def epoch_generator(seed: int, epoch: int, stream: str = "order") -> torch.Generator:
    """The torch stream of one epoch of a run: its batch order, or its augmentation draws."""
    return torch.Generator().manual_seed(stream_seed(seed, stream, epoch))


def dropout_rng(seed: int, epoch: int) -> np.random.Generator:
    """The embedding-dropout stream of one epoch of a fixed-backbone run (``hmic.models.model.dropout_keep``)."""
    return np.random.default_rng([seed, STREAMS["dropout"], epoch])


def head_seed(seed: int) -> int:
    """The torch seed of a fixed-backbone run's head initialisation."""
    return stream_seed(seed, "head")


# ----------------------------------------------------------------------------------------------
# Validation and predictions of one model


def predict_part(model: HierarchicalModel, part: SplitPart, store, device: torch.device, precision: str = "auto",
                 batch_size: int = 32) -> dict:
    """The model's outputs on a part, as the arrays of a run's predictions file (float32 probabilities)."""
    out = infer(model, (x for x, *_ in batches(part, store, batch_size)), device, precision)
    return prediction_arrays(model.hierarchy, part, out.fine_probs, out.coarse_probs, out.attention)




def prediction_arrays(hierarchy, part: SplitPart, fine_probs: np.ndarray, coarse_probs: np.ndarray,
                      attention: np.ndarray | None = None) -> dict:
    """A run's predictions file: its probabilities on ``part`` beside the part's keys, targets and masks."""
    result = {"keys": np.array(part.keys), "fine_probs": fine_probs, "coarse_probs": coarse_probs,
              "fine_targets": part.fine_targets, "fine_mask": part.fine_mask,
              "coarse_targets": part.coarse_targets, "coarse_mask": part.coarse_mask,
              "fine_names": np.array(hierarchy.fine_names), "coarse_names": np.array(hierarchy.coarse_names),
              "format_version": np.array(PREDICTIONS_VERSION),
              "edges": hierarchy.edges}  # (parent id, child id) per link, node ids: coarse 0..C-1, then fine
    if hierarchy.is_two_level:
        result["parent"] = np.array(hierarchy.parent)  # coarse index of each fine tag (version 1's field)
    if attention is not None:
        result["attention"] = attention.astype(np.float16)
    return result


def level_losses(fine_probs: np.ndarray, coarse_probs: np.ndarray, part: SplitPart, scores: bool = False) -> dict:
    """The validation BCE per level of one run's float32 probabilities on ``part`` (what picks the best epoch);
    with ``scores`` (a tracked run), their macro ROC-AUC and PR-AUC per level too."""
    losses = {"val_fine_loss": masked_bce(fine_probs, part.fine_targets, part.fine_mask),
              "val_coarse_loss": masked_bce(coarse_probs, part.coarse_targets, part.coarse_mask)}
    return {**losses, **validation_scores(fine_probs, coarse_probs, part)} if scores else losses


# ----------------------------------------------------------------------------------------------
# One run being trained


class RunState:
    """One run being trained: its folder, model, config, best record and metrics history."""

    def __init__(self, cfg: TrainConfig, model: HierarchicalModel, frontend):
        self.cfg, self.model, self.run = cfg, model, cfg.run()
        self.frontend = frontend  # the features' own front-end: it goes into the checkpoints
        self.start_epoch, self.best, self.history = 0, dict(NO_BEST), []

    def begin(self, resume: bool, data: TrainingData, console=None) -> dict | None:
        """Write the run's config and what it trains on (``trained_on.json``, which predict reports); resume
        from last.pt (model, epoch, best record, history) when asked and possible, returning last.pt's
        training state (optimiser, random streams) for the trainer to restore; else start afresh (None)."""
        run = self.run
        run.folder.mkdir(parents=True, exist_ok=True)
        run.write_config(self.cfg.record())
        record_training_data(run, self.cfg.data_dir, data)
        if not (resume and run.resumable):
            run.clear_metrics()
            return None
        state = read_state(run.last_path)
        self.model.load_state_dict(state["model"])
        self.start_epoch, self.best = state["epoch"] + 1, state["best"]
        # last.pt is an epoch's commit point: a metrics row appended after it, or lost by a kill before the
        # append, comes back from its history; the timings known only after its commit come from the file
        written = {r["epoch"]: r for r in run.metrics()}
        self.history = [{**row, **{k: v for k, v in written.get(row["epoch"], {}).items() if k not in row}}
                        for row in state["training"]["history"]]
        run.write_metrics(self.history)
        if console is not None:
            console.print(f"resuming {run} at epoch {self.start_epoch + 1}/{self.cfg.epochs}")
        return state["training"]

    def commit(self, epoch: int, row: dict, val: dict, val_seconds: float, lr: float, started: float,
               training_state: Callable[[], dict], device: torch.device, embedding: dict | None = None) -> bool:
        """The epoch's commit: best.pt when the validation fine loss improved, then last.pt (the model,
        ``training_state()``, every metrics row so far), then the row appended to metrics.jsonl.
        ``embedding``: a frozen run's backbone (``hmic.models.checkpoint``). Returns whether it improved."""
        run, frontend, config = self.run, self.frontend, self.cfg.record()
        t_save = time.perf_counter()
        row = {**row, **val, "lr": lr, "seconds": round(time.time() - started, 3),
               "validation_seconds": round(val_seconds, 6)}  # 6 places: a stacked run's share of its stack's pass
        improved = val["val_fine_loss"] < self.best["val_fine_loss"]
        if improved:
            self.best = {"val_fine_loss": val["val_fine_loss"], "epoch": epoch}
            save_checkpoint(run.best_path, self.model, frontend, config, epoch=epoch, best=self.best,
                            embedding=embedding)
        # the time of this epoch's checkpoints is known only once they are written: it goes into the row of
        # metrics.jsonl (and the next epoch's history), while last.pt holds the row as it was at its commit
        self.history.append(dict(row))
        save_checkpoint(run.last_path, self.model, frontend, config, epoch=epoch, best=self.best, embedding=embedding,
                        training={**training_state(), "history": self.history})
        row["checkpoint_seconds"] = round(time.perf_counter() - t_save, 3)
        row["checkpoint_bytes"] = run.last_path.stat().st_size + (run.best_path.stat().st_size if improved else 0)
        if device.type == "cuda":
            row["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated(device))
        run.append_metrics(row)
        log_epoch(run, self.cfg, row)  # the tracker's curves (--tracker), from the very row of metrics.jsonl
        return improved

    def keep_untrained(self, val: dict, val_seconds: float, embedding: dict | None = None) -> None:
        """A zero-epoch run of a head that comes trained (``Head.ready_untrained``: the audioset head): the
        model as it is saved as best.pt ("epoch" -1, its validation losses the best record)."""
        self.best = {"val_fine_loss": val["val_fine_loss"], "epoch": -1, "untrained": True,
                     "validation_seconds": round(val_seconds, 3)}
        save_checkpoint(self.run.best_path, self.model, self.frontend, self.cfg.record(), epoch=-1, best=self.best,
                        embedding=embedding)

    def finish(self, data: TrainingData, device: torch.device, batch_size: int = 32) -> dict:
        """The best checkpoint's predictions on validation and test, then done.json (the run's summary)."""
        run, cfg = self.run, self.cfg
        self.model.load_state_dict(read_state(run.best_path)["model"])
        for name in ("val", "test"):
            run.write_predictions(name, predict_part(self.model, data.parts[name], data.store, device, cfg.precision,
                                                     batch_size))
        summary = {"run": str(run), "method": cfg.method, "lambda": cfg.lam, "seed": cfg.seed,
                   "best_epoch": self.best["epoch"], "best_val_fine_loss": self.best["val_fine_loss"],
                   "epochs": cfg.epochs, "device": str(device), "protocol": cfg.protocol}
        run.write_done(summary)
        close_tracker(run)
        if not cfg.keep_last:  # last.pt exists to resume: a finished run keeps best.pt
            run.last_path.unlink(missing_ok=True)
        return summary


# ----------------------------------------------------------------------------------------------
# The loop


class Trainer(Protocol):
    """What ``train_epochs`` trains: one run, or a stack of runs sharing one optimiser."""

    members: list[RunState]
    description: str  # the progress bar's label
    embedding: dict | None  # the backbone a frozen run's checkpoints name, else None
    predict_batch: int  # rows per forward pass of the final predictions

    def train_epoch(self, epoch: int, steps: int, step_done: Callable[[float | None], None]
                    ) -> tuple[list[float], float, dict]:
        """One epoch: each member's mean training loss, the last step's learning rate, and the row fields
        every member shares (data and compute seconds, clips)."""

    def validate(self) -> tuple[list[dict], float]:
        """Each member's validation losses (``level_losses``) and each member's seconds of validation."""

    def training_state(self, member: int) -> dict:
        """What member's last.pt needs beyond its model to resume exactly (optimiser, random streams); the
        member's model holds its current parameters when this is called."""


def train_epochs(trainer: Trainer, data: TrainingData, device: torch.device, start_epoch: int, console,
                 progress: bool = True, stop_after_epoch: int | None = None) -> list[dict]:
    """Train ``trainer``'s members from ``start_epoch`` to the end, committing each epoch of each member,
    then finish them (predictions and done.json). ``stop_after_epoch`` simulates an interruption (for
    tests): it returns after that epoch, leaving the folders exactly as a killed run would."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    cfg = trainer.members[0].cfg
    if cfg.epochs == 0:  # heads that come trained (audioset): each run is written as it is, then finished
        vals, val_seconds = trainer.validate()
        for r, member in enumerate(trainer.members):
            member.keep_untrained(vals[r], val_seconds, trainer.embedding)
        return [m.finish(data, device, trainer.predict_batch) for m in trainer.members]
    steps = steps_per_epoch(data, cfg)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not progress) as bar:
        task = bar.add_task(trainer.description, total=cfg.epochs * steps, completed=start_epoch * steps, info="")
        for epoch in range(start_epoch, cfg.epochs):
            started = time.time()

            def step_done(loss: float | None) -> None:
                bar.update(task, advance=1,
                           info=f"epoch {epoch + 1}/{cfg.epochs}" + (f" loss {loss:.4f}" if loss is not None else ""))

            losses, lr, shared = trainer.train_epoch(epoch, steps, step_done)
            vals, val_seconds = trainer.validate()
            improved = []
            for r, member in enumerate(trainer.members):
                row = {"epoch": epoch, "train_loss": losses[r], **shared}
                improved.append(member.commit(epoch, row, vals[r], val_seconds, lr, started,
                                              lambda r=r: trainer.training_state(r), device, trainer.embedding))
            fine = [v["val_fine_loss"] for v in vals]
            info = (f"val fine loss {fine[0]:.4f}{' (best)' if improved[0] else ''}" if len(fine) == 1
                    else f"val fine loss {min(fine):.4f}–{max(fine):.4f}")
            bar.update(task, info=f"epoch {epoch + 1}/{cfg.epochs} {info}")
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                return [{"interrupted": True, "epoch": epoch} for _ in trainer.members]
    return [m.finish(data, device, trainer.predict_batch) for m in trainer.members]
