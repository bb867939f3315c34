"""Reading PANNs' AudioSet CNN14 checkpoint (``Cnn14_16k_mAP=0.438.pth``, facts in ``hmic.data.download``):
safely (``weights_only``), its MD5 checked when it has the published name, its keys strictly, and its
frozen front-end tensors (STFT kernels, mel filterbank) compared with hmic's front-end.

Whether a front-end mismatch is an error or a warning is the caller's explicit choice
(``strict_frontend``); ``hmic train`` warns, since the features it trains on are what counts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from hmic.audio.decoding import FrontendConfig
from hmic.data.download import CNN14
from hmic.errors import HmicError
from hmic.fileio import md5_file
from hmic.audio.logmel import LogMel

FRONTEND_KEYS = ("spectrogram_extractor.stft.conv_real.weight", "spectrogram_extractor.stft.conv_imag.weight",
                 "logmel_extractor.melW")
# the AudioSet classifier: not the backbone's; the audioset head reads it (read_audioset_classifier)
IGNORED_KEYS = ("fc_audioset.weight", "fc_audioset.bias")


def read_checkpoint_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a PANNs checkpoint's state_dict safely (weights_only; a few numpy globals allow-listed)."""
    path = Path(path)
    if not path.is_file():
        raise HmicError(f"checkpoint {path} does not exist; run 'hmic download cnn14' or pass --pretrained none")
    if path.name == CNN14.filename and md5_file(path) != CNN14.md5:
        raise HmicError(f"{path}: MD5 is not the published {CNN14.md5}; delete it and run 'hmic download cnn14'")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        # Some PANNs files carry small numpy objects (e.g. in the sampler state): allow just those.
        core = getattr(np, "_core", None) or np.core
        allowed = [np.dtype, np.ndarray, core.multiarray._reconstruct, core.multiarray.scalar]
        allowed += [type(np.dtype(t)) for t in ("float32", "float64", "int64", "int32", "bool")]
        try:
            with torch.serialization.safe_globals(allowed):
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise HmicError(f"{path} is not a loadable PyTorch checkpoint ({str(e).splitlines()[0]})") from None
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise HmicError(f"{path}: expected a dict with the weights under 'model' (a PANNs checkpoint)")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def check_frontend_tensors(state: dict[str, torch.Tensor], cfg: FrontendConfig) -> list[str]:
    """Compare the checkpoint's frozen front-end tensors with ours; returns the disagreements."""
    problems = []
    n = cfg.n_fft
    window = torch.hann_window(n, periodic=True, dtype=torch.float64)
    k = torch.arange(n // 2 + 1, dtype=torch.float64)[:, None]
    t = torch.arange(n, dtype=torch.float64)[None]
    expected = {
        FRONTEND_KEYS[0]: (torch.cos(2 * np.pi * k * t / n) * window)[:, None, :],
        FRONTEND_KEYS[1]: (-torch.sin(2 * np.pi * k * t / n) * window)[:, None, :],
        FRONTEND_KEYS[2]: LogMel(cfg).filterbank.double(),
    }
    for key, want in expected.items():
        if key not in state:
            continue
        got = state[key].double()
        if got.shape != want.shape:
            problems.append(f"{key}: shape {tuple(got.shape)}, expected {tuple(want.shape)}")
        elif (got - want).abs().max().item() > 1e-5:
            problems.append(f"{key}: differs from hmic's front-end by {(got - want).abs().max().item():.2e}")
    return problems


def load_panns_checkpoint(backbone: torch.nn.Module, path: str | Path, frontend: FrontendConfig, *,
                          strict_frontend: bool = True, warn: Callable[[str], None] | None = None) -> None:
    """Strictly load the backbone keys of an AudioSet CNN14 checkpoint into ``backbone``, then compare the
    checkpoint's frozen front-end tensors with the run's front-end: a mismatch raises with
    ``strict_frontend``, else it is passed to ``warn`` (when given) and loading stands."""
    state = read_checkpoint_state(path)
    own = backbone.state_dict()
    wanted = {k: v for k, v in state.items() if k not in FRONTEND_KEYS and k not in IGNORED_KEYS}
    missing = sorted(set(own) - set(wanted))
    unexpected = sorted(set(wanted) - set(own))
    if missing or unexpected:
        raise HmicError(
            f"{path} does not match CNN14 ({backbone.cfg.arch}): "
            + (f"missing keys: {', '.join(missing)}" if missing else "")
            + ("; " if missing and unexpected else "")
            + (f"unexpected keys: {', '.join(unexpected)}" if unexpected else "")
        )
    wrong = [f"{k}: {tuple(wanted[k].shape)} in the file, {tuple(own[k].shape)} expected"
             for k in own if wanted[k].shape != own[k].shape]
    if wrong:
        raise HmicError(f"{path}: wrong shapes (is --arch right? pretrained weights need cnn14): " + "; ".join(wrong))
    backbone.load_state_dict(wanted, strict=True)
    problems = check_frontend_tensors(state, frontend)
    if problems and strict_frontend:
        raise HmicError(f"{path}: front-end tensors disagree with hmic's front-end: " + "; ".join(problems))
    if problems and warn is not None:
        warn("the checkpoint's front-end differs from hmic's: " + "; ".join(problems))


def read_audioset_classifier(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The AudioSet classifier of a PANNs checkpoint: ``fc_audioset``'s weight (527, D) and bias (527,),
    its rows in the order of ``hmic.data.audioset.audioset_classes``. A file without it (an hmic run's
    backbone, a stand-in backbone) or with another class count is refused, by name."""
    from hmic.data.audioset import N_CLASSES

    path = Path(path)
    if path.is_dir() or (path.is_file() and _is_hmic_checkpoint(path)):
        raise HmicError(f"{path} is an hmic run or checkpoint, which has no AudioSet classifier: the audioset model "
                        f"needs PANNs' AudioSet checkpoint ({CNN14.filename}: 'hmic download cnn14')")
    state = read_checkpoint_state(path)
    weight, bias = state.get(IGNORED_KEYS[0]), state.get(IGNORED_KEYS[1])
    if weight is None or bias is None:
        raise HmicError(f"{path} has no AudioSet classifier (no fc_audioset.weight/bias): the audioset model needs "
                        f"PANNs' AudioSet checkpoint ({CNN14.filename}: 'hmic download cnn14')")
    if weight.ndim != 2 or bias.shape != weight.shape[:1]:
        raise HmicError(f"{path}: fc_audioset has shapes {tuple(weight.shape)} and {tuple(bias.shape)}, not (classes, D) and (classes,)")
    if weight.shape[0] != N_CLASSES:
        raise HmicError(f"{path}: fc_audioset has {weight.shape[0]} classes; the audioset model reads AudioSet's "
                        f"{N_CLASSES} (PANNs' {CNN14.filename}), refused")
    return weight.float(), bias.float()


def _is_hmic_checkpoint(path: Path) -> bool:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return False
    return isinstance(obj, dict) and obj.get("format") == "hmic-checkpoint"
