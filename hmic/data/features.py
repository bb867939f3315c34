"""`hmic featurize` and the feature store that training and evaluation read.

Layout (under the work dir, never inside the dataset):

    features/<frontend digest>/
        manifest.json     front-end parameters + digest, keys in row order, shape, counts
        logmel.f16        float16 (N, T, n_mels), read through np.memmap
        done.u8           (N,) 1 once row i is written (flushed after the rows themselves)
        failures.csv      sample_key, path, error  (clips left out of training, with the reason)

One store holds every clip of the dataset's partitions, so changing the validation split needs no
recomputation. A store is found by the digest of the front-end that made it: features of another
front-end are never mixed in.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hmic.audio.decoding import AudioError, FrontendConfig
from hmic.data.openmic import OpenMIC
from hmic.audio.logmel import clip_features
from hmic.errors import HmicError
from hmic.fileio import write_csv, write_json

# The store's files (see the layout above).
MANIFEST = "manifest.json"
LOGMEL = "logmel.f16"
DONE = "done.u8"
FAILURES = "failures.csv"
FAILURES_HEADER = ("sample_key", "path", "error")
STORE_FILES = (LOGMEL, DONE, FAILURES, MANIFEST)
FLUSH_EVERY = 64


def store_dir(work_dir: Path, cfg: FrontendConfig = FrontendConfig()) -> Path:
    return Path(work_dir) / "features" / cfg.digest()


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


class StoreStopped(Exception):
    """Featurizing stopped for a cause that is not one clip's audio (raised in a worker, re-raised here)."""


def _featurize_one(job: tuple[int, object, FrontendConfig]) -> tuple[int, np.ndarray | None, str]:
    """One clip's features, or its AudioError's text: only a clip's own audio makes it a failure. Any
    other error (a library that does not load, memory, a bug) is not the clip's fault: it stops the job."""
    index, path, cfg = job
    try:
        return index, clip_features(path, cfg).astype(np.float16), ""
    except AudioError as e:
        return index, None, str(e)
    except Exception as e:
        raise StoreStopped(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''} "
                           f"(while computing {path})") from None


@dataclass
class FeaturizeSummary:
    total: int
    done: int
    failed: int
    skipped: int
    seconds: float
    folder: Path

    @property
    def failures_path(self) -> Path:
        return self.folder / FAILURES

    @property
    def clips_per_second(self) -> float:
        return (self.done) / self.seconds if self.seconds > 0 else 0.0


def featurize(keys: list[str], paths: list[Path], work_dir: Path, cfg: FrontendConfig = FrontendConfig(),
              workers: int = 1, force: bool = False, progress: bool = True, console=None,
              limit: int | None = None) -> FeaturizeSummary:
    """Compute the log-mel of every clip into the store; resumes rows already done.

    ``limit`` stops after that many new rows (used to test interruption); the store stays resumable.
    """
    from rich.console import Console
    from tqdm import tqdm

    from hmic.environment import require_torch_stack

    require_torch_stack()  # a broken torch/torchaudio is one error here, not every clip in failures.csv
    console = console or Console(stderr=True)
    folder = make_store_folder(store_dir(work_dir, cfg), "feature store")
    n, shape = len(keys), (len(keys), cfg.n_frames, cfg.n_mels)
    manifest_path = folder / MANIFEST
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest["keys"] != list(keys) or manifest["digest"] != cfg.digest():
            if not force:
                raise HmicError(
                    f"{folder} holds features of another set of clips; pass --force to recompute them"
                )
            for name in STORE_FILES:
                (folder / name).unlink(missing_ok=True)
    if not manifest_path.exists():
        _create_store(folder, shape)
        write_json(manifest_path, {"digest": cfg.digest(), "frontend": cfg.to_dict(), "dtype": "float16",
                                   "shape": list(shape), "keys": list(keys), "complete": False})
    feats = np.memmap(folder / LOGMEL, dtype=np.float16, mode="r+", shape=shape)
    done = np.memmap(folder / DONE, dtype=np.uint8, mode="r+", shape=(n,))
    failures = _read_failures(folder)
    todo = [i for i in range(n) if not done[i] and keys[i] not in failures]
    skipped = n - len(todo)
    if limit is not None:
        todo = todo[:limit]
    t0 = time.time()
    n_done = n_failed = 0
    pending: list[int] = []
    bar = tqdm(total=n, initial=skipped, desc="featurizing", unit="clip", disable=not progress)

    def commit() -> None:
        feats.flush()  # rows first, then their flags: a crash in between only recomputes them
        for i in pending:
            done[i] = 1
        done.flush()
        pending.clear()

    jobs = [(i, paths[i] if hasattr(paths[i], "path") else str(paths[i]), cfg) for i in todo]  # AudioSource or a file
    try:
        if workers <= 1:
            _init_worker()
            results = map(_featurize_one, jobs)
            pool = None
        else:
            pool = ProcessPoolExecutor(workers, initializer=_init_worker)
            results = pool.map(_featurize_one, jobs, chunksize=8)
        for i, row, error in results:
            if row is None:
                failures[keys[i]] = (str(paths[i]), error)
                _write_failures(folder, failures)
                console.print(f"[yellow]skipping {keys[i]}: {error}[/]", highlight=False, soft_wrap=True)
                n_failed += 1
            else:
                feats[i] = row
                pending.append(i)
                n_done += 1
                if len(pending) >= FLUSH_EVERY:
                    commit()
            bar.update(1)
    except (StoreStopped, OSError) as e:  # not one clip's fault: stop, keep what is written, resume later
        cause = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.filename else str(e)
        raise HmicError(f"featurize stopped: {cause}. The {skipped + n_done + n_failed} clips done so far are "
                        f"kept in {folder}; fix the cause and run 'hmic featurize' again to resume") from None
    finally:
        commit()
        bar.close()
        if workers > 1 and pool is not None:
            pool.shutdown(cancel_futures=True)
    complete = bool(all(done[i] or keys[i] in failures for i in range(n)))
    manifest = json.loads(manifest_path.read_text())
    manifest.update(complete=complete, n_done=int(np.asarray(done).sum()), n_failed=len(failures))
    write_json(manifest_path, manifest)
    return FeaturizeSummary(n, n_done, n_failed, skipped, time.time() - t0, folder)


def featurize_dataset(dataset: OpenMIC, work_dir: Path, cfg: FrontendConfig = FrontendConfig(), **options) -> FeaturizeSummary:
    """``featurize`` every clip of the dataset's partitions, in sorted key order (the store's row order),
    each from its audio source (a file, or a stretch of one). ``options``: those of ``featurize``."""
    keys = sorted(dataset.train_keys + dataset.test_keys)
    return featurize(keys, [dataset.audio_source(k) for k in keys], work_dir, cfg, **options)


def make_store_folder(folder: Path, what: str) -> Path:
    """``folder`` created (parents too), or one line naming it and the fix."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HmicError(f"cannot create the {what} {folder} ({e.strerror}); pass --work-dir "
                        "(or $HMIC_WORK_DIR) to a writable folder") from None
    return folder


def _create_store(folder: Path, shape: tuple[int, ...], data_file: str = LOGMEL, dtype=np.float16) -> None:
    """A store's two files (its rows and their done flags), their disk space reserved now
    (posix_fallocate), so that a full disk is an error before any work rather than a crash (SIGBUS)
    when a memory-mapped page is written."""
    need = int(np.prod(shape)) * np.dtype(dtype).itemsize + shape[0]
    try:
        for name, kind, dims in ((data_file, dtype, shape), (DONE, np.uint8, shape[:1])):
            np.memmap(folder / name, dtype=kind, mode="w+", shape=dims).flush()
            if hasattr(os, "posix_fallocate"):
                fd = os.open(folder / name, os.O_RDWR)
                try:
                    os.posix_fallocate(fd, 0, int(np.prod(dims)) * np.dtype(kind).itemsize)
                finally:
                    os.close(fd)
    except OSError as e:
        for name in (data_file, DONE):
            (folder / name).unlink(missing_ok=True)
        free = shutil.disk_usage(folder).free if folder.exists() else 0
        raise HmicError(f"cannot create the store in {folder} ({e.strerror}): it needs {need / 1e9:.2f} GB, "
                        f"{free / 1e9:.2f} GB are free; free space or pass --work-dir on another disk") from None


def _read_failures(folder: Path) -> dict[str, tuple[str, str]]:
    path = folder / FAILURES
    if not path.exists():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        return {r["sample_key"]: (r["path"], r["error"]) for r in csv.DictReader(f)}


def _write_failures(folder: Path, failures: dict[str, tuple[str, str]]) -> None:
    write_csv(folder / FAILURES, FAILURES_HEADER, [[key, *failures[key]] for key in sorted(failures)])


class RowStore:
    """Read-only view of a store of one row per clip (``keys`` in row order), memory-mapped: its manifest,
    ``data`` (N, ...), the done flags and the failures. ``usable`` and ``rows`` select a part's clips.
    Subclasses name their data file, its dtype, and the command that fills them (``command``)."""

    data_file = LOGMEL
    dtype = np.float16
    command = "hmic featurize"
    verb = "featurized"

    def __init__(self, folder: Path):
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.exists():
            raise HmicError(f"no {self.verb} clips in {folder}; run '{self.command}' first")
        self.manifest = json.loads(path.read_text())
        self.folder = folder
        self.frontend = FrontendConfig(**self.manifest["frontend"])
        self.keys: list[str] = self.manifest["keys"]
        self.index = {k: i for i, k in enumerate(self.keys)}
        self.shape = tuple(self.manifest["shape"])
        self.data = np.memmap(folder / self.data_file, dtype=self.dtype, mode="r", shape=self.shape)
        self.done = np.fromfile(folder / DONE, dtype=np.uint8).astype(bool)
        self.failures = _read_failures(folder)

    def usable(self, keys: list[str], part: str = "") -> list[str]:
        """Keys whose rows exist. Failed clips are left out with a warning naming them;
        clips never computed are an error (run the store's command to finish)."""
        missing = [k for k in keys if k not in self.index]
        if missing:
            raise HmicError(f"{len(missing)} clips of {part or 'the split'} (e.g. {missing[0]}) are not in {self.folder}; "
                            f"re-run '{self.command} --force'")
        failed = [k for k in keys if k in self.failures]
        if failed:
            warnings.warn(f"{len(failed)} clips of {part or 'the split'} left out, their audio failed ({', '.join(failed[:5])}"
                          f"{', ...' if len(failed) > 5 else ''}); see {self.folder / FAILURES}", stacklevel=2)
        not_done = [k for k in keys if k not in self.failures and not self.done[self.index[k]]]
        if not_done:
            raise HmicError(f"{len(not_done)} clips (e.g. {not_done[0]}) are not {self.verb} yet; "
                            f"run '{self.command}' to finish ({self.folder})")
        return [k for k in keys if k not in self.failures]

    def rows(self, keys: list[str]) -> np.ndarray:
        return np.array([self.index[k] for k in keys], dtype=np.int64)


class FeatureStore(RowStore):
    """The log-mel feature store (float16 (N, T, n_mels)), found by its front-end's digest."""

    def __init__(self, folder: Path, cfg: FrontendConfig | None = None):
        super().__init__(folder)
        manifest = self.manifest
        if cfg is not None and (manifest["digest"] != cfg.digest() or manifest["frontend"] != cfg.to_dict()):
            raise HmicError(
                f"features in {folder} were made with another front-end ({manifest['frontend']}); "
                "re-run 'hmic featurize' for this model's front-end"
            )

    @classmethod
    def open(cls, work_dir: Path, cfg: FrontendConfig = FrontendConfig()) -> "FeatureStore":
        folder = store_dir(work_dir, cfg)
        if not (folder / MANIFEST).exists():
            others = sorted(p.name for p in (Path(work_dir) / "features").glob("*") if (p / MANIFEST).exists())
            hint = f" (found stores of other front-ends: {', '.join(others)})" if others else ""
            raise HmicError(f"no features for front-end {cfg.digest()} in {Path(work_dir) / 'features'}{hint}; run 'hmic featurize'")
        return cls(folder, cfg)
