"""`hmic featurize` and the feature store that training and evaluation read (a store of
``hmic.data.store``: its life cycle, files and reader are shared with the embedding store).

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

import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hmic.audio.decoding import AudioError, FrontendConfig
from hmic.data.openmic import OpenMIC
from hmic.audio.logmel import clip_features
from hmic.data.store import FAILURES, MANIFEST, RowStore, StoreWriter, read_failures, write_failures
from hmic.errors import HmicError

LOGMEL = "logmel.f16"
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
    n, shape = len(keys), (len(keys), cfg.n_frames, cfg.n_mels)
    store = StoreWriter(store_dir(work_dir, cfg), "features", LOGMEL, np.float16,
                        {"digest": cfg.digest(), "frontend": cfg.to_dict(), "dtype": "float16", "shape": list(shape),
                         "keys": list(keys)},
                        same=lambda m: m["keys"] == list(keys) and m["digest"] == cfg.digest(), force=force,
                        store_name="feature store")
    folder, feats, done = store.folder, store.data, store.done
    failures = read_failures(folder)
    todo = [i for i in range(n) if not done[i] and keys[i] not in failures]
    skipped = n - len(todo)
    if limit is not None:
        todo = todo[:limit]
    t0 = time.time()
    n_done = n_failed = 0
    pending: list[int] = []
    bar = tqdm(total=n, initial=skipped, desc="featurizing", unit="clip", disable=not progress)

    def commit() -> None:
        store.commit(pending)
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
                write_failures(folder, failures)
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
    store.close(np.array([k not in failures for k in keys], dtype=bool), len(failures))
    return FeaturizeSummary(n, n_done, n_failed, skipped, time.time() - t0, folder)


def featurize_dataset(dataset: OpenMIC, work_dir: Path, cfg: FrontendConfig = FrontendConfig(), **options) -> FeaturizeSummary:
    """``featurize`` every clip of the dataset's partitions, in sorted key order (the store's row order),
    each from its audio source (a file, or a stretch of one). ``options``: those of ``featurize``."""
    keys = sorted(dataset.train_keys + dataset.test_keys)
    return featurize(keys, [dataset.audio_source(k) for k in keys], work_dir, cfg, **options)


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
