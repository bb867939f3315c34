"""The exact CNN14 log-mel front-end (docs/methods.md, "The front-end"), in PyTorch: waveform → log-mel in dB (ref 1).

``LogMel`` is the one used by ``hmic featurize``, training and ``hmic predict`` (torch backend);
``GraphLogMel`` is the same computation in graph-friendly operations for ``hmic export --onnx``.
Waveforms come from ``hmic.audio.decoding`` (decode → mono → 16 kHz).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hmic.audio.decoding import FrontendConfig, decode_mono, fit_length


class LogMel(nn.Module):
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


def logmel_of_wave(wave: torch.Tensor | np.ndarray, cfg: FrontendConfig = FrontendConfig()) -> torch.Tensor:
    """(L,) or (B, L) 16-kHz wave → (T, n_mels) or (B, T, n_mels) float32 log-mel."""
    wave = torch.as_tensor(wave)
    with torch.no_grad():
        out = _logmel(cfg)(wave if wave.dim() == 2 else wave[None])
    return out if wave.dim() == 2 else out[0]


def clip_features(path, cfg: FrontendConfig = FrontendConfig()) -> np.ndarray:
    """The features of one clip: decode, mono, resample, fit to cfg.clip_seconds, log-mel. ``path``:
    a file, or an ``AudioSource`` (a stretch of a file). Returns (cfg.n_frames, cfg.n_mels) float32.
    """
    start, end = getattr(path, "start", 0.0), getattr(path, "end", None)
    wave = fit_length(decode_mono(getattr(path, "path", path), cfg, start, end), cfg.clip_samples)
    return logmel_of_wave(wave, cfg).numpy()


class GraphLogMel(nn.Module):
    """The front-end of ``hmic.audio.logmel.LogMel`` (PANNs' log-mel) in graph-friendly operations: reflect
    padding, the DFT as a strided convolution (as in PANNs' torchlibrosa), power, the float64-built
    Slaney filterbank, 10·log10. Equal to LogMel within float32 rounding (tested)."""

    def __init__(self, cfg: FrontendConfig):
        super().__init__()
        self.cfg = cfg
        n = cfg.n_fft
        window = torch.hann_window(n, periodic=True, dtype=torch.float64)
        angle = 2 * torch.pi * torch.arange(n // 2 + 1, dtype=torch.float64)[:, None] * torch.arange(n, dtype=torch.float64)[None] / n
        basis = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window])  # (2K, n)
        self.register_buffer("dft", basis[:, None, :].float())
        self.register_buffer("mel_fb", slaney_filterbank(cfg))  # (K, M)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        n, k = self.cfg.n_fft, self.cfg.n_fft // 2 + 1
        x = F.pad(wave[:, None, :], (n // 2, n // 2), mode="reflect")
        spec = F.conv1d(x, self.dft, stride=self.cfg.hop_length)  # (B, 2K, T)
        power = spec[:, :k] ** 2 + spec[:, k:] ** 2
        mel = torch.matmul(power.transpose(1, 2), self.mel_fb)  # (B, T, M)
        return 10.0 * torch.log10(torch.clamp(mel, min=self.cfg.log_floor))
