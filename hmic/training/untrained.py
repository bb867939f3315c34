"""Where the weights of a head that comes trained (``Head.ready_untrained``: the ``audioset`` head, PANNs'
AudioSet classifier read through a class → tag mapping, docs/audioset-model.md) come from
(``pretrained_head``). With ``--epochs 0`` its run is written without training
(``hmic.training.loop.RunState.keep_untrained``); with ``--epochs N`` it fine-tunes from those weights (the
epoch loops as for any head)."""

from __future__ import annotations

import torch

from hmic.training.config import TrainConfig


def pretrained_head(head: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """A run's freshly built head with the weights it comes with: the audioset head reads the rows of
    ``cfg.pretrained``'s fc_audioset that ``cfg.audioset_map`` names; other heads stay as drawn."""
    if getattr(head, "ready_untrained", False):
        head.load_classifier(cfg.pretrained, cfg.audioset_map or None)
    return head
