"""The network: backbones (``backbones``, with PANNs' checkpoint reader in ``panns``), the hierarchical
heads and their loss (``heads``), the model that joins them (``model``), hmic's checkpoint format
(``checkpoint``), the one inference loop (``inference``) and explanations of coarse decisions
(``explain``).

A new head goes in ``heads`` (registered by name for ``--method``); a new backbone in ``backbones``
(registered for ``--arch``). C-HMCNN's max constraint module and MCLoss, for taxonomies of any depth,
are pure functions in ``constraint`` (not yet a head; issue 34). ``BackboneConfig`` is defined here, torch-free, so that a run's config
(``hmic.training.config``) can name a backbone without importing torch.
May import: the top-level core modules, ``hmic.audio`` and ``hmic.data``.
"""

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
