"""Audio in, before the model (docs/methods.md, "The front-end"): decode → mono → 16 kHz → windows.

One implementation, used by ``hmic featurize``, ``hmic import`` and ``hmic predict``, in numpy alone:
``hmic predict --backend onnx`` runs without importing torch. The log-mel that follows is
``hmic.audio.logmel``. Units: sample rates in Hz, lengths in samples unless named ``*_seconds``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from hmic.errors import HmicError


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


_SILENCE_LOCK = threading.Lock()


@contextmanager
def decoder_stderr_silenced():
    """Keep what the C decoders (mpg123, vorbis...) print on file descriptor 2 off the terminal while a
    file is decoded: their lines are not hmic's messages, and a failure is reported as one error."""
    with _SILENCE_LOCK:
        try:
            saved = os.dup(2)
        except OSError:  # no descriptor 2 (a daemon): nothing to keep off
            yield
            return
        try:
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), 2)
                try:
                    yield
                finally:
                    os.dup2(saved, 2)
        finally:
            os.close(saved)


def undecodable(path: Path, error: Exception) -> str:
    """The message for a file libsndfile cannot decode. Its own message for a corrupt compressed file
    ("File does not exist or is not a regular file (possibly a pipe?)") is wrong for a file that exists."""
    said = str(error).splitlines()[0] if str(error) else type(error).__name__
    said = said.replace(f"Error opening {str(path)!r}: ", "")
    misleading = "does not exist" in said and path.is_file()
    kind = f"{path.suffix.lstrip('.').upper()} " if path.suffix else ""
    return (f"{path}: could not be decoded: the {kind}file exists but is corrupt, truncated or not audio in a format "
            f"libsndfile reads" + ("" if misleading else f" ({said})"))


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
        with decoder_stderr_silenced():
            if start or end is not None:
                sr = sf.info(str(path)).samplerate
                data, sr = sf.read(str(path), dtype="float32", always_2d=True, start=int(round(start * sr)),
                                   stop=None if end is None else int(round(end * sr)))
            else:
                data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile errors come in several types
        raise AudioError(undecodable(path, e)) from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: the file holds no samples")
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: contains NaN or infinite samples")
    return np.ascontiguousarray(data.T), int(sr)


RESAMPLE_CHUNK = 8192  # output blocks per matrix product (bounds the memory of long files)
MAX_KERNEL = 4_000_000  # taps of a resampling kernel (16 MB); 44.1 → 16 kHz needs 100,640


@lru_cache(maxsize=16)
def resample_kernel(orig: int, new: int, spec: str) -> tuple[np.ndarray, int]:
    """The polyphase sinc kernel (new', K) float32 and its half-width for ``orig`` → ``new`` Hz, with
    ``orig``/``new`` reduced by their gcd: torchaudio's ``_get_sinc_resample_kernel``, step for step
    (including its float32 roundings), so that ``resample`` equals ``torchaudio.transforms.Resample``
    within float32 rounding (tested) without importing torch."""
    method, lowpass_width, rolloff, beta = spec.split("/")
    lowpass_width, rolloff, beta = int(lowpass_width), float(rolloff), float(beta)
    if method not in ("sinc_interp_kaiser", "sinc_interp_hann"):
        raise HmicError(f"resampler {spec!r}: unknown method {method!r} (sinc_interp_kaiser or sinc_interp_hann)")
    g = math.gcd(orig, new)
    orig, new = orig // g, new // g
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_width * orig / base)
    if new * (orig + 2 * width) > MAX_KERNEL:
        raise AudioError(f"a sample rate of {orig * g} Hz has no small ratio to {new * g} Hz (the resampling "
                         f"kernel would hold {new * (orig + 2 * width):,} taps); convert the file to a common "
                         "rate (8, 11.025, 16, 22.05, 24, 32, 44.1, 48, 96 kHz ...) first")
    idx = np.arange(-width, width + orig, dtype=np.float64)[None] / orig
    t = (np.arange(0, -new, -1).astype(np.float32) / np.float32(new)).astype(np.float64)[:, None] + idx
    t = np.clip(t * base, -lowpass_width, lowpass_width)
    if method == "sinc_interp_hann":
        window = np.cos(t * math.pi / lowpass_width / 2) ** 2
    else:  # torchaudio keeps beta and i0(beta) in float32
        beta32 = float(np.float32(beta))
        window = np.i0(beta32 * np.sqrt(1 - (t / lowpass_width) ** 2)) / float(np.float32(np.i0(beta32)))
    t = t * math.pi
    with np.errstate(invalid="ignore", divide="ignore"):
        kernel = np.where(t == 0, 1.0, np.sin(t) / t)
    kernel = kernel * window * (base / orig)
    return np.ascontiguousarray(kernel.astype(np.float32)), width


def resample(wave: np.ndarray, orig: int, new: int, spec: str = FrontendConfig.resampler) -> np.ndarray:
    """(L,) float32 at ``orig`` Hz → (ceil(L·new/orig),) at ``new`` Hz: the polyphase kernel applied
    with stride orig' (torchaudio's ``_apply_sinc_resample_kernel`` as matrix products over blocks)."""
    if orig == new:
        return wave
    kernel, width = resample_kernel(orig, new, spec)
    g = math.gcd(orig, new)
    step, phases = orig // g, new // g
    length = wave.shape[0]
    padded = np.pad(np.asarray(wave, dtype=np.float32), (width, width + step))
    frames = np.lib.stride_tricks.sliding_window_view(padded, kernel.shape[1])[::step]  # (N, K), a view
    out = np.empty((frames.shape[0], phases), dtype=np.float32)
    for i in range(0, frames.shape[0], RESAMPLE_CHUNK):
        np.matmul(frames[i:i + RESAMPLE_CHUNK], kernel.T, out=out[i:i + RESAMPLE_CHUNK])
    return out.reshape(-1)[:math.ceil(phases * length / step)]


def to_mono(audio: np.ndarray, sample_rate: int, cfg: FrontendConfig) -> np.ndarray:
    """(channels, L) at any rate → (L',) float32 mono at cfg.sample_rate (downmix by mean)."""
    mono = np.ascontiguousarray(audio.mean(axis=0, dtype=np.float32))
    return resample(mono, sample_rate, cfg.sample_rate, cfg.resampler)


def fit_length(wave: np.ndarray, n_samples: int) -> np.ndarray:
    """Cut or zero-pad the last axis to n_samples."""
    length = wave.shape[-1]
    if length >= n_samples:
        return wave[..., :n_samples]
    return np.pad(wave, [(0, 0)] * (wave.ndim - 1) + [(0, n_samples - length)])


def decode_mono(path: str | Path, cfg: FrontendConfig, start: float = 0.0, end: float | None = None) -> np.ndarray:
    """``decode`` then ``to_mono``: (L,) float32 at cfg.sample_rate; errors name the file."""
    audio, sr = decode(path, start, end)
    try:
        return to_mono(audio, sr, cfg)
    except AudioError as e:
        raise AudioError(f"{path}: {e}") from None


def load_wave(path: str | Path, cfg: FrontendConfig = FrontendConfig(), min_samples: int = 0) -> np.ndarray:
    """Decode a whole file to mono cfg.sample_rate (L,); refuses files shorter than ``min_samples``
    (the backbone's minimum input, ``Backbone.min_samples``)."""
    wave = decode_mono(path, cfg)
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
