"""The model: a registered backbone followed by a registered hierarchical head."""

from __future__ import annotations

import torch
from torch import nn

from .backbones import BackboneConfig, build_backbone
from .heads import HeadOutput, build_head
from .hierarchy import Hierarchy


class HierarchicalModel(nn.Module):
    """Backbone + head: log-mel (B, T, M) → HeadOutput (fine (B, F) and coarse (B, C) probabilities)."""

    def __init__(self, backbone_cfg: BackboneConfig, method: str, hierarchy: Hierarchy, backbone: nn.Module | None = None):
        super().__init__()
        self.method = method
        self.backbone = backbone if backbone is not None else build_backbone(backbone_cfg)
        self.head = build_head(method, self.backbone.embedding_dim, hierarchy)

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
        embedding = self.backbone(logmel)
        if torch.is_autocast_enabled(embedding.device.type):
            with torch.autocast(embedding.device.type, enabled=False):
                return self.head(embedding.float())
        return self.head(embedding)
