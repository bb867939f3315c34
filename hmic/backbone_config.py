"""What builds a backbone (``BackboneConfig``), torch-free: ``hmic.config`` takes its defaults from here
without importing the backbones (and torch); ``hmic.backbones`` builds the networks from it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackboneConfig:
    """What builds a backbone: its registered name and its training-time augmentation."""

    arch: str = "cnn14"
    specaugment: bool = True
    time_stripes: int = 2
    time_width: int = 64  # widths drawn in [0, width) frames
    freq_stripes: int = 2
    freq_width: int = 8  # widths drawn in [0, width) bins
    embedding_dropout: float = 0.5  # PANNs' transfer recipe: dropout(relu(fc1(x)), 0.5) feeds the classifier
