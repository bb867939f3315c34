"""The model: a registered backbone, the embedding dropout, then a registered hierarchical head."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hmic.models.backbones import BackboneConfig, build_backbone
from hmic.models.heads import HeadOutput, build_head
from hmic.data.hierarchy import Hierarchy

KEEP_LEVELS = 65536  # drawn-mask dropout: a unit is kept when a uniform 16-bit integer is ≥ round(p · 65536)


def dropout_keep(shape: tuple[int, ...], p: float, rng: np.random.Generator) -> np.ndarray:
    """The keep mask of one dropout draw (bool, ``shape``) from ``rng``: 16 random bits per unit, the rate
    ``p`` exact to 1/65536 (0.5 exactly). Five times faster on a CPU than torch's Bernoulli draws, which
    would otherwise be most of a frozen-protocol step (docs/frozen.md)."""
    n = int(np.prod(shape))
    bits = np.frombuffer(rng.bytes(2 * n), dtype=np.uint16).reshape(shape)
    return bits >= int(round(p * KEEP_LEVELS))


def apply_keep(z: torch.Tensor, keep: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout with a given keep mask: kept units scaled by 1 / (1 − p), the others 0 (a product
    with the scaled mask: five times faster than torch.where on a CPU, the same kept values exactly)."""
    return z * (keep.to(z.dtype) * (1.0 / (1.0 - p)))


class EmbeddingDropout(nn.Module):
    """Dropout on the embedding Z before the head (PANNs' transfer recipe), in training only.

    By default it draws from torch's global generator (the fine-tuning protocol). After ``draw_from(rng)``
    (a numpy Generator, ``dropout_keep``) the masks come from that stream instead: the frozen protocol and
    its fixed-backbone reference draw the same masks from the same per-epoch stream."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.rng: np.random.Generator | None = None

    def draw_from(self, rng: np.random.Generator | None) -> None:
        """Draw the masks from ``rng`` from now on (None: torch's global generator again)."""
        self.rng = rng

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return z
        if self.rng is None:
            return F.dropout(z, p=self.p, training=True)
        return apply_keep(z, torch.from_numpy(dropout_keep(tuple(z.shape), self.p, self.rng)).to(z.device), self.p)


class CachedEmbedding(nn.Module):
    """The frozen protocol's stand-in for a backbone: its input is already the embedding Z (read from an
    embedding store, ``hmic embed``), passed through unchanged. No parameters: a frozen run's checkpoint
    holds the head alone and names the backbone its embeddings came from (``hmic.models.checkpoint``)."""

    def __init__(self, cfg: BackboneConfig, embedding_dim: int):
        super().__init__()
        self.cfg, self.embedding_dim = cfg, embedding_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z


class HierarchicalModel(nn.Module):
    """Backbone + head: log-mel (B, T, M) → HeadOutput (fine (B, F) and coarse (B, C) probabilities)."""

    def __init__(self, backbone_cfg: BackboneConfig, method: str, hierarchy: Hierarchy, backbone: nn.Module | None = None,
                 head: nn.Module | None = None):
        super().__init__()
        self.method = method
        self.backbone = backbone if backbone is not None else build_backbone(backbone_cfg)
        self.embedding_dropout = EmbeddingDropout(backbone_cfg.embedding_dropout)
        self.head = head if head is not None else build_head(method, self.backbone.embedding_dim, hierarchy)

    @classmethod
    def from_state(cls, backbone_cfg: BackboneConfig, method: str, hierarchy: Hierarchy,
                   state_dict: dict[str, torch.Tensor]) -> "HierarchicalModel":
        """Rebuild a saved model without first initialising weights the state replaces: the backbone is
        built on the meta device and takes the state's tensors as they are (memory-mapped when the
        checkpoint was loaded so). The head is built normally (it is small and has derived buffers)."""
        with torch.device("meta"):
            backbone = build_backbone(backbone_cfg)
        model = cls(backbone_cfg, method, hierarchy, backbone=backbone)
        model.load_state_dict(state_dict, assign=True)
        return model

    @property
    def hierarchy(self) -> Hierarchy:
        return self.head.hierarchy

    def forward(self, logmel: torch.Tensor) -> HeadOutput:
        """The backbone runs in whatever autocast is active; the head always runs in float32, so that
        probabilities near 0 and 1, the loss and its coarse gradient keep full precision."""
        embedding = self.embedding_dropout(self.backbone(logmel))
        if torch.is_autocast_enabled(embedding.device.type):
            with torch.autocast(embedding.device.type, enabled=False):
                return self.head(embedding.float())
        return self.head(embedding)
