"""hmic's checkpoint format: what a checkpoint file holds, writing it atomically and reading it back
safely. Rebuilding a model from one, and reading a backbone from any weights file, is
``hmic.models.loading``.

A checkpoint is self-describing: loading needs only the file. It holds

    format, format_version   "hmic-checkpoint", FORMAT_VERSION
    model                    the state_dict of backbone + head
    backbone                 BackboneConfig fields (the registered name and its augmentation)
    head                     {"method": registered head name}
    hierarchy                Hierarchy.to_dict(): version 1 for the paper's 2-level form (a record without
                             'version' is one, as hmic wrote it before any depth), version 2 for any
                             other; loading rebuilds it with Hierarchy.from_dict and refuses other versions
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

import platform
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from hmic.audio.decoding import FrontendConfig
from hmic.errors import HmicError
from hmic.fileio import atomic_path
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


def set_thresholds(path: str | Path, thresholds: dict) -> None:
    """Store tuned thresholds inside a checkpoint, so that the file alone is enough for prediction."""
    state = read_state(path)
    state["thresholds"] = thresholds
    _write(path, state)
