"""Audio I/O and the exact CNN14 front-end (README, "The front-end"): decode → mono → 16 kHz → fixed length → log-mel.

One implementation, used by ``hmic featurize`` and ``hmic predict``.
Units: sample rates in Hz, lengths in samples unless named ``*_seconds``; log-mel in dB (ref 1).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .errors import HmicError


class AudioError(HmicError):
    """A file that cannot be turned into features (unreadable, empty, NaN samples, too short)."""


@dataclass(frozen=True)
class FrontendConfig:
    """Every parameter that changes the features. Its hash names the feature store."""

    sample_rate: int = 16_000
    n_fft: int = 512
    hop_length: int = 160
    n_mels: int = 64
    f_min: float = 50.0
    f_max: float = 8000.0
    clip_seconds: float = 10.0
    # torchaudio's Kaiser-windowed sinc (the settings of resampy's/librosa's "kaiser_best").
    resampler: str = "sinc_interp_kaiser/64/0.9475937167399596/14.769656459379492"
    log_floor: float = 1e-10

    @property
    def clip_samples(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate))

    @property
    def n_frames(self) -> int:
        """1 + floor(L / hop): 1001 for 10 s."""
        return 1 + self.clip_samples // self.hop_length

    def to_dict(self) -> dict:
        return asdict(self)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


def decode(path: str | Path, start: float = 0.0, end: float | None = None) -> tuple[np.ndarray, int]:
    """Read any format libsndfile reads (from ``start`` to ``end`` seconds, reading only that stretch).
    Returns (audio (channels, L) float32 in [-1, 1], sample rate).

    Integer PCM of any width is scaled to [-1, 1] by soundfile. Raises AudioError for a missing,
    unreadable, empty or non-finite file.
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    try:
        if start or end is not None:
            sr = sf.info(str(path)).samplerate
            data, sr = sf.read(str(path), dtype="float32", always_2d=True, start=int(round(start * sr)),
                               stop=None if end is None else int(round(end * sr)))
        else:
            data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile errors come in several types
        raise AudioError(f"{path}: not a readable audio file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: the file holds no samples")
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: contains NaN or infinite samples")
    return np.ascontiguousarray(data.T), int(sr)


@lru_cache(maxsize=16)
def _resampler(orig: int, new: int, spec: str):
    import torchaudio

    method, width, rolloff, beta = spec.split("/")
    return torchaudio.transforms.Resample(
        orig, new, resampling_method=method, lowpass_filter_width=int(width), rolloff=float(rolloff), beta=float(beta)
    )


def to_mono(audio: np.ndarray, sample_rate: int, cfg: FrontendConfig) -> torch.Tensor:
    """(channels, L) at any rate → (L',) float32 mono at cfg.sample_rate (downmix by mean)."""
    mono = torch.from_numpy(np.ascontiguousarray(audio.mean(axis=0, dtype=np.float32)))
    if sample_rate != cfg.sample_rate:
        mono = _resampler(sample_rate, cfg.sample_rate, cfg.resampler)(mono[None])[0]
    return mono


def fit_length(wave: torch.Tensor, n_samples: int) -> torch.Tensor:
    """Cut or zero-pad the last axis to n_samples."""
    length = wave.shape[-1]
    if length >= n_samples:
        return wave[..., :n_samples]
    return torch.nn.functional.pad(wave, (0, n_samples - length))


class LogMel(torch.nn.Module):
    """Waveform (B, L) → log-mel (B, T, n_mels) in dB, T = 1 + L // hop. The PANNs front-end, step for step."""

    def __init__(self, cfg: FrontendConfig = FrontendConfig()):
        super().__init__()
        import torchaudio

        self.cfg = cfg
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, win_length=cfg.n_fft, hop_length=cfg.hop_length,
            f_min=cfg.f_min, f_max=cfg.f_max, n_mels=cfg.n_mels, power=2.0, center=True, pad_mode="reflect",
            norm="slaney", mel_scale="slaney", window_fn=torch.hann_window,  # periodic Hann
        )
        # torchaudio builds the filterbank in float32, which puts relative errors up to ~3e-3 on the
        # small weights near each triangle's tips (visible in dB when a tone sits there). Build the
        # same filterbank in float64 and store it as float32.
        fb = slaney_filterbank(cfg)
        self.mel.mel_scale.fb.copy_(fb)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        power = self.mel(wave.float())  # (B, n_mels, T)
        return (10.0 * torch.log10(torch.clamp(power, min=self.cfg.log_floor))).transpose(-1, -2)

    @property
    def filterbank(self) -> torch.Tensor:
        """(n_fft/2 + 1, n_mels) Slaney filterbank (the checkpoint's ``logmel_extractor.melW``)."""
        return self.mel.mel_scale.fb


def slaney_filterbank(cfg: FrontendConfig) -> torch.Tensor:
    """(n_fft/2 + 1, n_mels) Slaney-scale, Slaney-normalised filterbank computed in float64."""
    import torchaudio

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        fb = torchaudio.functional.melscale_fbanks(
            cfg.n_fft // 2 + 1, cfg.f_min, cfg.f_max, cfg.n_mels, cfg.sample_rate, norm="slaney", mel_scale="slaney"
        )
    finally:
        torch.set_default_dtype(previous)
    return fb.float()


@lru_cache(maxsize=4)
def _logmel(cfg: FrontendConfig) -> LogMel:
    return LogMel(cfg).eval()


def logmel_of_wave(wave: torch.Tensor, cfg: FrontendConfig = FrontendConfig()) -> torch.Tensor:
    """(L,) or (B, L) 16-kHz wave → (T, n_mels) or (B, T, n_mels) float32 log-mel."""
    with torch.no_grad():
        out = _logmel(cfg)(wave if wave.dim() == 2 else wave[None])
    return out if wave.dim() == 2 else out[0]


def clip_features(path, cfg: FrontendConfig = FrontendConfig()) -> np.ndarray:
    """The features of one clip: decode, mono, resample, fit to cfg.clip_seconds, log-mel. ``path``:
    a file, or an ``AudioSource`` (a stretch of a file). Returns (cfg.n_frames, cfg.n_mels) float32.
    """
    start, end = getattr(path, "start", 0.0), getattr(path, "end", None)
    audio, sr = decode(getattr(path, "path", path), start, end)
    wave = fit_length(to_mono(audio, sr, cfg), cfg.clip_samples)
    return logmel_of_wave(wave, cfg).numpy()


def load_wave(path: str | Path, cfg: FrontendConfig = FrontendConfig(), min_samples: int = 0) -> torch.Tensor:
    """Decode a whole file to mono cfg.sample_rate (L,); refuses files shorter than ``min_samples``
    (the backbone's minimum input, ``Backbone.min_samples``)."""
    audio, sr = decode(path)
    wave = to_mono(audio, sr, cfg)
    if wave.shape[0] < max(min_samples, 1):
        raise AudioError(
            f"{path}: {wave.shape[0] / cfg.sample_rate:.2f} s is too short; the model needs at least "
            f"{min_samples / cfg.sample_rate:.2f} s of audio"
        )
    return wave


def window_starts(length: int, size: int, hop: int) -> list[int]:
    """Start samples of the windows that cover a file of ``length`` samples: one every ``hop``, and for
    a file longer than a window a last one that ends exactly at the file's end, so that no window holds
    padding the model never saw in training. Only a file shorter than one window is zero-padded.
    (``hmic predict``'s windows and ``hmic import``'s clips.)"""
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, hop))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts
