"""hmic checkpoints, saved and loaded side by side.

A checkpoint is self-describing: loading needs only the file. It holds

    format, format_version   "hmic-checkpoint", FORMAT_VERSION
    model                    the state_dict of backbone + head
    backbone                 BackboneConfig fields (the registered name and its augmentation)
    head                     {"method": registered head name}
    hierarchy                Hierarchy.to_dict()
    frontend                 FrontendConfig fields of the features the model was trained on
    config                   the run's resolved training configuration
    thresholds               {"fine": {tag: t}, "coarse": {tag: t}} once tuned, else absent
    versions                 hmic, torch, python, numpy
    epoch, best              the epoch it was saved after, the best validation record so far
    training                 last.pt only: optimizer state and RNG states, to resume bit-exactly
    embedding                frozen protocol only: the backbone the head was trained over, by reference
                             ({"source": weights file, "weights_digest", "arch", "store": embedding store
                             digest, "precision"}); "model" then holds the head alone, and loading
                             rebuilds the backbone from that file after checking its digest

Always read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from hmic.audio.decoding import FrontendConfig
from hmic.models.backbones import BackboneConfig
from hmic.errors import HmicError
from hmic.fileio import atomic_path
from hmic.data.hierarchy import Hierarchy
from hmic.models.model import HierarchicalModel

FORMAT = "hmic-checkpoint"
FORMAT_VERSION = 1
REQUIRED = ("model", "backbone", "head", "hierarchy", "frontend", "config")


def versions() -> dict:
    from hmic import __version__

    return {"hmic": __version__, "torch": str(torch.__version__), "python": platform.python_version(),
            "numpy": str(np.__version__)}


def save_checkpoint(path: str | Path, model: HierarchicalModel, frontend: FrontendConfig, config: dict, *,
                    epoch: int, best: dict, thresholds: dict | None = None, training: dict | None = None,
                    embedding: dict | None = None) -> None:
    """Write a checkpoint atomically (a crash leaves the previous file intact)."""
    payload = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "model": model.state_dict(),
        "backbone": asdict(model.backbone.cfg),
        "head": {"method": model.method},
        "hierarchy": model.hierarchy.to_dict(),
        "frontend": frontend.to_dict(),
        "config": dict(config),
        "versions": versions(),
        "epoch": epoch, "best": best,
    }
    if thresholds is not None:
        payload["thresholds"] = thresholds
    if training is not None:
        payload["training"] = training
    if embedding is not None:
        payload["embedding"] = embedding
    _write(path, payload)


def _write(path: str | Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_state(path: str | Path, mmap: bool = False) -> dict:
    """The raw checkpoint dictionary, checked to be an hmic checkpoint of a known format version.
    ``mmap``: tensors stay memory-mapped from the file (pages are read when first touched)."""
    path = Path(path)
    if not path.is_file():
        raise HmicError(f"{path} does not exist; pass a run folder with best.pt or an hmic checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:
        raise HmicError(f"{path} is not a loadable hmic checkpoint ({str(e).splitlines()[0]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise HmicError(f"{path} is not an hmic checkpoint (no format '{FORMAT}'); "
                        "an AudioSet CNN14 file goes to 'hmic train --pretrained', not here")
    if state.get("format_version") != FORMAT_VERSION:
        raise HmicError(f"{path} has checkpoint format version {state.get('format_version')}; this hmic reads "
                        f"version {FORMAT_VERSION}. Retrain the run or use the hmic version that wrote it "
                        f"({state.get('versions', {}).get('hmic', '?')})")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise HmicError(f"{path} is an incomplete hmic checkpoint (no '{missing[0]}')")
    return state


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
# A backbone's weights from a file (a PANNs CNN14 checkpoint, an hmic checkpoint or run folder), and the
# digest of their values: what names an embedding store (``hmic.training.embed``) and what a frozen-protocol
# checkpoint checks its backbone by.

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


_IDENTITIES: dict[tuple, tuple[str, str]] = {}  # (file, size, mtime, arch, front-end) → (arch, weights digest)


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
    key = _identity_key(path, arch, frontend)
    if key not in _IDENTITIES:
        loaded = load_backbone(arch, path, frontend, warn)
        return loaded.arch, loaded.source, loaded.digest
    return _IDENTITIES[key][0], str(path), _IDENTITIES[key][1]


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
    _IDENTITIES[_identity_key(path, wanted, frontend)] = (loaded.arch, loaded.digest)
    return loaded


def set_thresholds(path: str | Path, thresholds: dict) -> None:
    """Store tuned thresholds inside a checkpoint, so that the file alone is enough for prediction."""
    state = read_state(path)
    state["thresholds"] = thresholds
    _write(path, state)
