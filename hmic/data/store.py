"""A store of one row per clip, and its life cycle: the feature store (``hmic featurize``,
``hmic.data.features``) and the embedding store (``hmic embed``, ``hmic.training.embed``) are both one.

Layout of a store folder:

    manifest.json     what the rows are (and of which clips, ``keys`` in row order), their shape
    <data file>       the rows (N, ...), read and written through np.memmap
    done.u8           (N,) 1 once row i is written (flushed after the rows themselves)
    failures.csv      sample_key, path, error  (clips left out, with the reason)

Life cycle: ``StoreWriter`` opens the folder (a store of another set of clips is refused unless
forced), creates the files with their disk space reserved, commits rows (rows flushed, then their flags:
a kill in between only recomputes them) and finally records in the manifest whether every row is done.
``RowStore`` reads a store, memory-mapped.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from hmic.audio.decoding import FrontendConfig
from hmic.errors import HmicError
from hmic.fileio import write_csv, write_json

MANIFEST = "manifest.json"
DONE = "done.u8"
FAILURES = "failures.csv"
FAILURES_HEADER = ("sample_key", "path", "error")


def make_store_folder(folder: Path, what: str) -> Path:
    """``folder`` created (parents too), or one line naming it and the fix."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HmicError(f"cannot create the {what} {folder} ({e.strerror}); pass --work-dir "
                        "(or $HMIC_WORK_DIR) to a writable folder") from None
    return folder


def create_store_files(folder: Path, shape: tuple[int, ...], data_file: str, dtype) -> None:
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


def read_failures(folder: Path) -> dict[str, tuple[str, str]]:
    path = folder / FAILURES
    if not path.exists():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        return {r["sample_key"]: (r["path"], r["error"]) for r in csv.DictReader(f)}


def write_failures(folder: Path, failures: dict[str, tuple[str, str]]) -> None:
    write_csv(folder / FAILURES, FAILURES_HEADER, [[key, *failures[key]] for key in sorted(failures)])


class StoreWriter:
    """A store being filled. ``manifest``: what a new store records (``keys`` and ``shape`` included);
    ``same(existing manifest)``: whether a store already there holds these rows (else it is refused,
    or emptied with ``force``). ``what`` names the rows ("features"), ``store_name`` the store in messages
    ("feature store"). ``data`` and ``done`` are the memory-mapped rows and flags."""

    def __init__(self, folder: Path, what: str, data_file: str, dtype, manifest: dict,
                 same: Callable[[dict], bool], force: bool = False, store_name: str | None = None):
        self.folder, self.data_file = make_store_folder(folder, store_name or f"{what} store"), data_file
        self.manifest_path = folder / MANIFEST
        shape = tuple(manifest["shape"])
        if self.manifest_path.exists() and not same(json.loads(self.manifest_path.read_text())):
            if not force:
                raise HmicError(f"{folder} holds {what} of another set of clips; pass --force to recompute them")
            for name in (data_file, DONE, FAILURES, MANIFEST):
                (folder / name).unlink(missing_ok=True)
        if not self.manifest_path.exists():
            create_store_files(folder, shape, data_file, dtype)
            write_json(self.manifest_path, {**manifest, "complete": False})
        self.data = np.memmap(folder / data_file, dtype=dtype, mode="r+", shape=shape)
        self.done = np.memmap(folder / DONE, dtype=np.uint8, mode="r+", shape=shape[:1])

    def commit(self, rows) -> None:
        """Rows written are kept: the rows flushed first, then their flags (a crash in between only
        recomputes them)."""
        self.data.flush()
        for i in rows:
            self.done[i] = 1
        self.done.flush()

    def close(self, usable: np.ndarray, n_failed: int) -> bool:
        """Record in the manifest whether every ``usable`` row is done, and the counts; returns it."""
        complete = bool(np.asarray(self.done)[usable].all())
        manifest = json.loads(self.manifest_path.read_text())
        manifest.update(complete=complete, n_done=int(np.asarray(self.done).sum()), n_failed=n_failed)
        write_json(self.manifest_path, manifest)
        return complete


class RowStore:
    """Read-only view of a store of one row per clip (``keys`` in row order), memory-mapped: its manifest,
    ``data`` (N, ...), the done flags and the failures. ``usable`` and ``rows`` select a part's clips.
    Subclasses name their data file, its dtype, and the command that fills them (``command``)."""

    data_file = "logmel.f16"
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
        self.failures = read_failures(folder)

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
