"""Runs of a head whose weights come trained (``Head.ready_untrained``: the ``audioset`` head, PANNs'
AudioSet classifier read through a class → tag mapping, docs/audioset-model.md): where its weights come
from (``pretrained_head``), and ``--epochs 0``, a run written without training (``write_untrained``):
best.pt, the validation and test predictions and done.json, as any finished run has, so that
tune-thresholds, evaluate, table, compare, predict and export treat it like one. With ``--epochs N`` the
same head fine-tunes from those weights (the epoch loops as for any head)."""

from __future__ import annotations

import time
from dataclasses import asdict

import torch

from hmic.models.checkpoint import save_checkpoint
from hmic.models.model import HierarchicalModel
from hmic.runs.run import Run
from hmic.training.config import TrainConfig
from hmic.training.data import TrainingData


def pretrained_head(head: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """A run's freshly built head with the weights it comes with: the audioset head reads the rows of
    ``cfg.pretrained``'s fc_audioset that ``cfg.audioset_map`` names; other heads stay as drawn."""
    if getattr(head, "ready_untrained", False):
        head.load_classifier(cfg.pretrained, cfg.audioset_map or None)
    return head


def write_untrained(run: Run, model: HierarchicalModel, data: TrainingData, cfg: TrainConfig, device: torch.device,
                    batch_size: int = 32, embedding: dict | None = None) -> dict:
    """A zero-epoch run: the model as it is saved as best.pt ("epoch" -1, its validation losses as the
    best record), then ``finish`` (predictions on validation and test, done.json). ``embedding``: a
    frozen-protocol run's backbone reference (``hmic.models.checkpoint``)."""
    from hmic.training.finetune import finish, validation_losses

    run.clear_metrics()
    started = time.perf_counter()
    val, _ = validation_losses(model, data.parts["val"], data.store, device, cfg.precision, batch_size)
    best = {"val_fine_loss": val["val_fine_loss"], "epoch": -1, "untrained": True,
            "validation_seconds": round(time.perf_counter() - started, 3)}
    save_checkpoint(run.best_path, model, data.store.frontend, asdict(cfg), epoch=-1, best=best, embedding=embedding)
    return finish(run, model, data, cfg, best, device, batch_size)
