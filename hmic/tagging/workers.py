"""Files made ready for the model, ahead of it: decode → mono → 16 kHz → windows → log-mel (when the
runner takes log-mel), in worker processes with a bounded read-ahead, in input order."""

from __future__ import annotations

from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterator

import numpy as np

from hmic.audio.decoding import AudioError, FrontendConfig, fit_length, load_wave, window_starts

MEL_CHUNK = 16  # windows per log-mel call while preparing a file (bounds its memory)


@dataclass
class Prepared:
    """One file made ready for the model (in a worker process): its windows' inputs and start times."""

    index: int
    path: str
    duration: float = 0.0
    starts: np.ndarray | None = None  # (W,) seconds
    inputs: np.ndarray | None = None  # (W, T, M) log-mel or (W, L) waves
    error: str | None = None


@dataclass
class PrepareJob:
    """What every worker needs to prepare a file (sent once, to each worker's initializer)."""

    frontend: FrontendConfig
    min_samples: int
    hop_seconds: float
    inputs: str  # the runner's input: "logmel" or "wave"


def prepare(index: int, path: str | Path, job: PrepareJob) -> Prepared:
    """Decode → mono → resample → windows (``window_starts``) → log-mel (when the runner takes it)."""
    try:
        wave = load_wave(path, job.frontend, job.min_samples)
    except AudioError as e:
        return Prepared(index, str(path), error=str(e))
    except OSError as e:  # unreadable although it exists (permissions, I/O error)
        return Prepared(index, str(path), error=f"{path}: cannot be read ({e.strerror or e})")
    sr, size = job.frontend.sample_rate, job.frontend.clip_samples
    starts = window_starts(wave.shape[0], size, max(1, int(round(job.hop_seconds * sr))))
    chunks = np.stack([fit_length(wave[s:s + size], size) for s in starts])
    if job.inputs == "wave":
        inputs = chunks
    else:
        from hmic.audio.logmel import logmel_of_wave

        inputs = np.concatenate([logmel_of_wave(chunks[i:i + MEL_CHUNK], job.frontend).numpy()
                                 for i in range(0, len(chunks), MEL_CHUNK)])
    return Prepared(index, str(path), wave.shape[0] / sr, np.array(starts) / sr, inputs)


# A worker process's state, set once by its initializer (ProcessPoolExecutor sends functions by name).
_WORKER_JOB: PrepareJob | None = None
_BLAS_LIMIT = None  # kept alive for the worker's life


def _init_worker(job: PrepareJob) -> None:
    """One thread per worker process (BLAS for the resampler, torch for the log-mel): the workers run
    beside the model, whose threads already take the cores."""
    global _WORKER_JOB, _BLAS_LIMIT
    from threadpoolctl import threadpool_limits

    _BLAS_LIMIT = threadpool_limits(limits=1)
    if job.inputs == "logmel":
        import torch

        torch.set_num_threads(1)
    _WORKER_JOB = job


def _prepare_in_worker(index: int, path: str) -> Prepared:
    assert _WORKER_JOB is not None
    return prepare(index, path, _WORKER_JOB)


def prepare_all(paths: list[str], job: PrepareJob, workers: int, read_ahead: int | None = None) -> Iterator[Prepared]:
    """Prepared files in input order. ``workers`` > 0: that many processes work ahead of the caller,
    at most ``read_ahead`` files (default 2 per worker) beyond the one being consumed."""
    if workers <= 0:
        for i, p in enumerate(paths):
            yield prepare(i, p, job)
        return
    pool = ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(job,))
    try:
        todo = iter(enumerate(paths))
        futures = deque(pool.submit(_prepare_in_worker, i, p) for i, p in islice(todo, read_ahead or 2 * workers))
        while futures:
            prepared = futures.popleft().result()
            futures.extend(pool.submit(_prepare_in_worker, i, p) for i, p in islice(todo, 1))
            yield prepared
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
