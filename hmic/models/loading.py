"""Models from files: an hmic checkpoint rebuilt into its model (``Checkpoint.load``; a frozen-protocol
run's backbone rebuilt from the file it references), and a backbone read from any weights file (a PANNs
CNN14 checkpoint, an hmic checkpoint or run folder: ``load_backbone``) with the digest of its weights,
which names an embedding store (``hmic.training.embed``) and is what a frozen run checks its backbone by.
The file format itself is ``hmic.models.checkpoint``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from hmic.audio.decoding import FrontendConfig
from hmic.data.hierarchy import Hierarchy
from hmic.errors import HmicError
from hmic.models.backbones import BackboneConfig
from hmic.models.checkpoint import FORMAT, read_state
from hmic.models.model import HierarchicalModel


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model rebuilt from the file alone, and what it describes."""

    path: Path
    model: HierarchicalModel
    frontend: FrontendConfig
    config: dict
    thresholds: dict | None
    epoch: int
    state: dict

    @property
    def method(self) -> str:
        return self.model.method

    @property
    def hierarchy(self) -> Hierarchy:
        return self.model.hierarchy

    @classmethod
    def load(cls, path: str | Path) -> "Checkpoint":
        state = read_state(path, mmap=True)
        hierarchy = Hierarchy.from_dict(state["hierarchy"], source=str(path))
        if "embedding" in state:
            model = _with_referenced_backbone(path, state, hierarchy)
        else:
            model = HierarchicalModel.from_state(BackboneConfig(**state["backbone"]), state["head"]["method"],
                                                  hierarchy, state["model"])
        return cls(Path(path), model, FrontendConfig(**state["frontend"]), state["config"], state.get("thresholds"),
                   int(state.get("epoch", -1)), state)


def _with_referenced_backbone(path: Path, state: dict, hierarchy: Hierarchy) -> HierarchicalModel:
    """A frozen-protocol checkpoint's model: the backbone it was embedded with, rebuilt from its file
    (whose weights must still be the ones embedded), and the trained head from the checkpoint."""
    from hmic.models.heads import build_head

    info, frontend = state["embedding"], FrontendConfig(**state["frontend"])
    try:
        loaded = load_backbone(info["arch"], info["source"], frontend)
    except HmicError as e:
        raise HmicError(f"{path} is a frozen-protocol run whose backbone comes from {info['source']}: {e}") from None
    if loaded.digest != info["weights_digest"]:
        raise HmicError(f"{path} is a frozen-protocol run over the backbone of {info['source']}, whose weights have "
                        "changed since (another weights digest); restore that file or retrain the run")
    method = state["head"]["method"]
    head = build_head(method, loaded.backbone.embedding_dim, hierarchy)
    head.load_state_dict({k[len("head."):]: v for k, v in state["model"].items() if k.startswith("head.")})
    return HierarchicalModel(BackboneConfig(**state["backbone"]), method, hierarchy, backbone=loaded.backbone, head=head)


# ----------------------------------------------------------------------------------------------
# A backbone's weights from any file, and the digest of their values

def weights_digest(module) -> str:
    """sha256 of a module's state (names, dtypes, shapes, values), in key order."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class EmbeddingBackbone:
    """A backbone whose output an embedding store holds: the network, its arch and where it came from."""

    backbone: object  # hmic.models.backbones.Backbone (eval mode)
    arch: str
    source: str  # the resolved weights file (an AudioSet CNN14 file or an hmic checkpoint)
    digest: str  # weights_digest(backbone)


class IdentityCache:
    """What ``backbone_identity`` has already read in this process: (file, size, modification time,
    arch, front-end) → (arch, weights digest). A grid of frozen runs asks for its backbone's identity per
    run; reading 300 MB of weights once is enough, and a file that changed (size or time) is read again.
    ``clear()`` forgets everything."""

    def __init__(self):
        self._known: dict[tuple, tuple[str, str]] = {}

    def get(self, key: tuple) -> tuple[str, str] | None:
        return self._known.get(key)

    def put(self, key: tuple, arch: str, digest: str) -> None:
        self._known[key] = (arch, digest)

    def clear(self) -> None:
        self._known.clear()


IDENTITIES = IdentityCache()


def source_file(source: str | Path) -> Path:
    """The weights file ``source`` names: a file, or a run folder (its best.pt)."""
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise HmicError(f"backbone weights {path} do not exist; pass --pretrained an AudioSet CNN14 file "
                        "('hmic download cnn14'), an hmic run folder or an hmic checkpoint")
    return path.resolve()


def _identity_key(path: Path, arch: str, frontend: FrontendConfig) -> tuple:
    stat = path.stat()
    return (str(path), stat.st_size, stat.st_mtime_ns, arch, frontend.digest())


def backbone_identity(arch: str, source: str | Path, frontend: FrontendConfig, warn=None) -> tuple[str, str, str]:
    """(arch, resolved weights file, weights digest) of ``source``: what names its embedding store. The
    weights are read once per process and file (a grid of frozen runs asks for it per run)."""
    path = source_file(source)
    known = IDENTITIES.get(_identity_key(path, arch, frontend))
    if known is None:
        loaded = load_backbone(arch, path, frontend, warn)
        return loaded.arch, loaded.source, loaded.digest
    return known[0], str(path), known[1]


def load_backbone(arch: str, source: str | Path, frontend: FrontendConfig, warn=None) -> EmbeddingBackbone:
    """A fresh copy of the backbone of ``source`` (a PANNs CNN14 file for ``arch``, or an hmic run or
    checkpoint, whose own arch is used), in eval mode, with its weights digest."""
    from hmic.models.backbones import build_backbone

    path, wanted = source_file(source), arch
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        ours = isinstance(raw, dict) and raw.get("format") == FORMAT
        del raw
    except Exception:  # not an hmic checkpoint: the PANNs loader reads it, or says why it cannot
        ours = False
    if ours:  # an hmic checkpoint: its backbone, its arch
        ckpt = Checkpoint.load(path)
        if ckpt.frontend.to_dict() != frontend.to_dict():
            raise HmicError(f"{path} was trained on features of another front-end ({ckpt.frontend.to_dict()}); "
                            "embed the features it was trained on")
        backbone, arch = ckpt.model.backbone, ckpt.state["backbone"]["arch"]
    else:
        backbone = build_backbone(BackboneConfig(arch))
        backbone.check_frontend(frontend)
        backbone.load_pretrained(path, frontend, strict_frontend=False, warn=warn)
    backbone.eval()
    loaded = EmbeddingBackbone(backbone, arch, str(path), weights_digest(backbone))
    IDENTITIES.put(_identity_key(path, wanted, frontend), loaded.arch, loaded.digest)
    return loaded
