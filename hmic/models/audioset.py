"""The AudioSet classifier of PANNs' CNN14 checkpoint as a ready model, with no run folder: what
``hmic predict --model audioset`` and ``FileTagger.audioset`` tag with (docs/audioset-model.md).

``audioset_model`` is CNN14 with the checkpoint's backbone and the ``audioset`` head
(``hmic.models.heads.AudioSetClassifier``) holding the rows of its ``fc_audioset`` that the mapping names;
``class_probabilities`` gives all 527 AudioSet probabilities of log-mel windows. Without a tuned run, tags
are decided by ``DEFAULT_THRESHOLD`` (how it was chosen: docs/audioset-model.md, "Default thresholds").
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from hmic.audio.decoding import FrontendConfig
from hmic.data.download import default_checkpoint
from hmic.data.hierarchy import Hierarchy, load_hierarchy
from hmic.errors import HmicError
from hmic.models import BackboneConfig
from hmic.models.model import HierarchicalModel

# A fine or coarse tag is present when its probability reaches 0.5: the decision rule of a sigmoid output
# trained with binary cross-entropy (AudioSet's own label frequencies, equal costs), not tuned on any
# OpenMIC data (none can be used here); a tuned audioset run (--run) replaces it.
DEFAULT_THRESHOLD = 0.5


def checkpoint_path(checkpoint: str | Path | None = None) -> Path:
    """The AudioSet CNN14 file to read: ``checkpoint``, else where 'hmic download cnn14' puts it."""
    path = Path(checkpoint).expanduser() if checkpoint else default_checkpoint()
    if not path.is_file():
        raise HmicError(f"the AudioSet checkpoint {path} does not exist; run 'hmic download cnn14'"
                        + (" or pass --checkpoint PATH" if not checkpoint else ""))
    return path


def audioset_model(checkpoint: str | Path | None = None, mapping: str | Path | None = None,
                   hierarchy: Hierarchy | None = None, frontend: FrontendConfig | None = None,
                   warn: Callable[[str], None] | None = None) -> HierarchicalModel:
    """CNN14 with the backbone of ``checkpoint`` (default: 'hmic download cnn14''s file) and the
    ``audioset`` head reading its fc_audioset through ``mapping`` (default: the shipped
    openmic_audioset.yaml) for ``hierarchy`` (default: the shipped one), in eval mode."""
    from hmic.models.backbones import build_backbone
    from hmic.models.heads import AudioSetClassifier

    path = checkpoint_path(checkpoint)
    hierarchy = hierarchy or load_hierarchy()
    frontend = frontend or FrontendConfig()
    cfg = BackboneConfig("cnn14")
    head = AudioSetClassifier(2048, hierarchy)
    head.load_classifier(str(path), None if mapping is None else str(mapping))  # checks the mapping first
    backbone = build_backbone(cfg)
    backbone.check_frontend(frontend)
    backbone.load_pretrained(path, frontend, strict_frontend=False, warn=warn)
    return HierarchicalModel(cfg, AudioSetClassifier.registered_name, hierarchy, backbone=backbone, head=head).eval()


def default_thresholds(hierarchy: Hierarchy) -> dict:
    """``DEFAULT_THRESHOLD`` for every tag, in the form tune-thresholds stores (no song thresholds)."""
    return {"fine": {t: DEFAULT_THRESHOLD for t in hierarchy.fine_names},
            "coarse": {t: DEFAULT_THRESHOLD for t in hierarchy.coarse_names}}


def class_probabilities(model: HierarchicalModel, checkpoint: str | Path | None, logmel: torch.Tensor) -> torch.Tensor:
    """All 527 AudioSet probabilities σ(fc_audioset(Z)) of log-mel windows (B, T, M), Z from ``model``'s
    backbone in eval mode and fc_audioset read from ``checkpoint``: (B, 527), float32."""
    from hmic.models.panns import read_audioset_classifier

    weight, bias = read_audioset_classifier(checkpoint_path(checkpoint))
    model.eval()
    with torch.no_grad():
        z = model.backbone(logmel).float()
        return torch.sigmoid(torch.nn.functional.linear(z, weight, bias))

