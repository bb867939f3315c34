"""The run: one trained (method, λ, seed) and its folder. The only module that knows the layout.

A run folder holds, written in this order:

    provenance.json        one session per start or resume: code commit, versions, machine, command
                           line, and the error of a session that raised (``hmic.runs.provenance``)
    config.json            the resolved training configuration; method, λ and seed are read from
                           here, never from folder names
    metrics.jsonl          one line per epoch: train loss, validation loss per level, lr, seconds
    last.pt / best.pt      checkpoints (``hmic.models.checkpoint``), written atomically; best = lowest
                           validation fine-level loss (the hierarchy's leaves, at any depth)
    predictions_val.npz, predictions_test.npz   the best checkpoint's outputs for later stages
    done.json              the summary, once finished
    thresholds.json        after ``hmic tune-thresholds``
    tensorboard/           event files, with ``--tracker tensorboard`` (``hmic.training.tracker``)

New runs are filed as ``<runs>/<method>/lam<λ>/seed<S>/``, or ``<runs>/<method>/lw<w0>-<w1>-.../seed<S>/``
for a run trained with explicit level weights (``Run.at``); any other folder holding these files is a run
just the same.

Formats carry a ``format_version`` (docs/taxonomies.md); a file without one is version 1, what hmic wrote
before hierarchies of any depth, and is read unchanged; a newer version than this hmic knows is refused
with one line naming the file, its version and the fix:

    predictions_*.npz   1: the paper's two levels, ``parent`` (the coarse index of each fine tag);
                        2: ``edges`` (parent id, child id) over node ids (coarse = inner nodes 0..C-1, then
                        fine = leaves), any depth (``parent`` kept when the hierarchy has two levels)
    thresholds.json     1: ``fine``/``coarse`` thresholds by tag; 2: the same by node name at any depth
                        (fine = leaves, coarse = inner nodes), and ``format_version``
    done.json           1: the summary; 2: the same with ``format_version``
    metrics.jsonl       1: one row per epoch; 2: the same, each line with ``format_version``
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from hmic.errors import HmicError
from hmic.fileio import append_jsonl, atomic_path, read_json, read_jsonl, write_json, write_text

SPLITS = ("val", "test")
LEVELS = ("fine", "coarse")
DONE = "done.json"  # a run is finished once it has this file
THRESHOLDS = "thresholds.json"
# what tune-thresholds stores inside best.pt besides the two levels' thresholds, so the file alone predicts
# and says what it is: song thresholds, the tags without a threshold, validation scores, the training data
CARRIED = ("song", "not_trained", "defaulted", "validation", "trained_on")
# the newest format_version of each file this hmic reads and writes (module docstring); hmic.training
# writes predictions of PREDICTIONS_VERSION
PREDICTIONS_VERSION = 2
THRESHOLDS_VERSION = 2
DONE_VERSION = 2
METRICS_VERSION = 2  # each metrics.jsonl line states it (1: lines without it, the same fields)


def format_version(found, newest: int, path: Path | str, fix: str) -> int:
    """The format version a file states (``found``; None: version 1, written before versions were stated),
    or one HmicError naming the file, its version and ``fix`` when this hmic does not know it."""
    if found is None:
        return 1
    try:
        version = np.asarray(found).item()
    except (TypeError, ValueError):
        version = found
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or not 1 <= version <= newest:
        raise HmicError(f"{path}: format version {version!r}, this hmic reads versions 1 to {newest}; "
                        f"upgrade hmic, or {fix}")
    return int(version)


@dataclass(frozen=True)
class Run:
    folder: Path

    @classmethod
    def at(cls, runs_dir: str | Path, method: str, lam: float, seed: int,
           level_weights: Sequence[float] | None = None) -> "Run":
        return cls(Path(runs_dir) / method / loss_setting(lam, level_weights) / f"seed{seed}")

    # -- paths ------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.folder / "config.json"

    @property
    def metrics_path(self) -> Path:
        return self.folder / "metrics.jsonl"

    @property
    def best_path(self) -> Path:
        return self.folder / "best.pt"

    @property
    def last_path(self) -> Path:
        return self.folder / "last.pt"

    @property
    def done_path(self) -> Path:
        return self.folder / DONE

    @property
    def thresholds_path(self) -> Path:
        return self.folder / THRESHOLDS

    def predictions_path(self, split: str) -> Path:
        if split not in SPLITS:
            raise HmicError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        return self.folder / f"predictions_{split}.npz"

    def __str__(self) -> str:
        return str(self.folder)

    @property
    def lock_path(self) -> Path:
        """Beside the folder, not in it: ``--force`` deletes the folder while the lock is held."""
        return self.folder.parent / f".{self.folder.name}.lock"

    @contextlib.contextmanager
    def exclusive(self) -> Iterator["Run"]:
        """Hold the run's writer lock (an exclusive ``flock``, released by the OS when the process dies,
        so a killed run never blocks its resume). A second writer gets an HmicError naming the holder."""
        import fcntl

        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "?"
                raise HmicError(f"{self.folder} is being trained by another process (PID {holder}); wait for it "
                                "to end, or stop it, before training this run again") from None
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            try:
                yield self
            finally:
                f.seek(0)
                f.truncate()
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    # -- state ------------------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self.config_path.exists()

    @property
    def finished(self) -> bool:
        return self.done_path.exists()

    @property
    def resumable(self) -> bool:
        return self.last_path.exists()

    @property
    def tuned(self) -> bool:
        return self.thresholds_path.exists()

    def require_finished(self) -> "Run":
        if not self.finished:
            hint = " (unfinished: continue it with 'hmic train ... --resume')" if self.resumable else ""
            raise HmicError(f"{self.folder} is not a finished hmic run folder (no done.json){hint}")
        return self

    # -- config -----------------------------------------------------------------------------------
    def config(self) -> dict:
        if not self.config_path.exists():
            raise HmicError(f"{self.config_path} is missing; {self.folder} is not an hmic run folder")
        return read_json(self.config_path)

    def write_config(self, config: dict) -> None:
        write_json(self.config_path, config)

    @property
    def method(self) -> str:
        return str(self.config()["method"])

    @property
    def lam(self) -> float:
        return float(self.config()["lam"])

    @property
    def seed(self) -> int:
        return int(self.config()["seed"])

    @property
    def level_weights(self) -> tuple[float, ...] | None:
        """The loss weight of each level the run was trained with (--level-weights), or None (λ stood for them)."""
        text = self.config().get("level_weights") or ""  # absent from runs made before --level-weights
        return tuple(float(w) for w in text.split(",")) if text else None

    @property
    def setting(self) -> str:
        """What its loss weighs the levels by, as its folder names it: 'lam0.80', or 'lw0.2-0.3-0.5'. Runs of a
        method that differ only in seed share it (λ is selected among the settings: ``hmic.runs.selection``)."""
        return loss_setting(self.lam, self.level_weights)

    # -- history ----------------------------------------------------------------------------------
    def metrics(self) -> list[dict]:
        """The epoch rows of metrics.jsonl (its lines' format versions checked, then left out of the rows)."""
        rows = read_jsonl(self.metrics_path)
        for row in rows:
            format_version(row.pop("format_version", None), METRICS_VERSION, self.metrics_path,
                           "retrain the run with this one ('hmic train ... --force')")
        return rows

    def append_metrics(self, row: dict) -> None:
        append_jsonl(self.metrics_path, {**row, "format_version": METRICS_VERSION})

    def write_metrics(self, rows: list[dict]) -> None:
        """Replace metrics.jsonl with ``rows`` (on resume: the history saved in last.pt, the commit point)."""
        write_text(self.metrics_path, "".join(_json_line({**r, "format_version": METRICS_VERSION}) for r in rows))

    def clear_metrics(self) -> None:
        self.metrics_path.unlink(missing_ok=True)

    # -- results ----------------------------------------------------------------------------------
    def done(self) -> dict:
        """The run's summary from done.json (its format version checked, then left out of the summary)."""
        done = read_json(self.require_finished().done_path)
        format_version(done.pop("format_version", None), DONE_VERSION, self.done_path,
                       "retrain the run with this one ('hmic train ... --force')")
        return done

    def write_done(self, summary: dict) -> None:
        write_json(self.done_path, {"format_version": DONE_VERSION, **summary})

    def write_predictions(self, split: str, arrays: dict[str, np.ndarray]) -> None:
        with atomic_path(self.predictions_path(split)) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)  # targets and masks compress ~20x; probabilities a little

    def predictions(self, split: str) -> dict[str, np.ndarray]:
        path = self.require_finished().predictions_path(split)
        if not path.exists():
            raise HmicError(f"{path} is missing; the run did not finish writing its predictions (re-run it with --force)")
        return read_predictions(path)

    def thresholds(self) -> dict:
        """{"fine": {tag: t}, "coarse": {tag: t}, ...}; a clear error when not tuned yet, or tuned by a
        newer hmic."""
        if not self.tuned:
            raise HmicError(f"{self.folder} has no thresholds; run 'hmic tune-thresholds {self.folder}' first")
        stored = read_json(self.thresholds_path)
        format_version(stored.get("format_version"), THRESHOLDS_VERSION, self.thresholds_path,
                       f"tune them again with this one ('hmic tune-thresholds {self.folder}')")
        return stored

    def write_thresholds(self, result: dict) -> None:
        """thresholds.json (with its ``format_version``), and the same thresholds inside best.pt (the
        checkpoint alone then predicts)."""
        from hmic.models.checkpoint import set_thresholds

        write_json(self.thresholds_path, {"format_version": THRESHOLDS_VERSION, **result})
        if self.best_path.exists():
            set_thresholds(self.best_path, {key: result[key] for key in (*LEVELS, *CARRIED) if key in result})


def read_predictions(path: Path) -> dict[str, np.ndarray]:
    """A predictions file's arrays, of version 1 (``parent``) or 2 (``edges``); a newer version, or a file
    that lacks its version's hierarchy field, is one HmicError naming the file and the fix."""
    with np.load(path, allow_pickle=False) as z:
        pred = {k: z[k] for k in z.files}
    version = format_version(pred.get("format_version"), PREDICTIONS_VERSION, path,
                             "retrain the run with this one ('hmic train ... --force')")
    needed = "parent" if version == 1 else "edges"
    if needed not in pred:
        raise HmicError(f"{path}: a predictions file of format version {version} without its '{needed}' field; "
                        "it is damaged: retrain the run ('hmic train ... --force')")
    return pred


def predictions_hierarchy(pred: dict[str, np.ndarray], source: str = "<predictions>"):
    """The hierarchy a predictions file was made with (``hmic.data.hierarchy.Hierarchy``): node names from
    ``coarse_names`` and ``fine_names``, the links from ``edges`` (version 2) or ``parent`` (version 1).
    Node ids: coarse (inner) 0..C-1, then fine (leaves); ``depth`` and ``levels`` give each node's level."""
    from hmic.data.hierarchy import Hierarchy

    coarse, fine = [str(n) for n in pred["coarse_names"]], [str(n) for n in pred["fine_names"]]
    if "edges" not in pred:
        return Hierarchy.two_level("predictions", coarse, fine, [int(p) for p in pred["parent"]], source=source)
    parents: list[list[int]] = [[] for _ in range(len(coarse) + len(fine))]
    for p, c in np.asarray(pred["edges"], dtype=np.int64).reshape(-1, 2):
        if not (0 <= p < len(parents) and 0 <= c < len(parents)):
            raise HmicError(f"{source}: edge ({p}, {c}) names a node id outside 0..{len(parents) - 1}; "
                            "the file is damaged: retrain the run ('hmic train ... --force')")
        parents[c].append(int(p))
    return Hierarchy("predictions", tuple(coarse), tuple(fine), tuple(tuple(ps) for ps in parents), source=source)


def loss_setting(lam: float, level_weights: Sequence[float] | None = None) -> str:
    """The folder of a run's loss weights below its method: 'lam0.80', or 'lw0.2-0.3-0.5' with level weights."""
    if level_weights:
        return "lw" + "-".join(f"{w:g}" for w in level_weights)
    return f"lam{lam:.2f}"


def _json_line(row: dict) -> str:
    return json.dumps(row) + "\n"


def load_tuned_checkpoint(run_or_checkpoint: str | Path):
    """A run folder's best.pt (or a checkpoint file) and its tuned thresholds (stored in the file, or
    the run's thresholds.json); untuned is an error naming the command that tunes it.
    Returns (``hmic.models.loading.Checkpoint``, thresholds dict)."""
    from hmic.models.loading import Checkpoint

    path = Path(run_or_checkpoint)
    run = Run(path) if path.is_dir() else None
    ckpt = Checkpoint.load(run.best_path if run else path)
    thresholds = ckpt.thresholds
    if run is not None and run.tuned:
        stored = run.thresholds()
        # a checkpoint tuned by an older hmic lacks what thresholds.json may hold (which tags defaulted)
        thresholds = stored if thresholds is None else {**{k: stored[k] for k in CARRIED if k in stored}, **thresholds}
    if thresholds is None:
        raise HmicError(f"{ckpt.path} has no tuned thresholds; run 'hmic tune-thresholds {run or path.parent}'")
    return ckpt, thresholds


def finished_runs(folder: str | Path) -> list[Run]:
    """Every finished run below ``folder`` (any depth), in path order."""
    folder = Path(folder)
    return [Run(d.parent) for d in sorted(folder.rglob(DONE))] if folder.is_dir() else []


def find_runs(paths: list[str | Path]) -> list[Run]:
    """Run folders given directly, or every finished run below the given folders."""
    runs: list[Run] = []
    for p in paths:
        p = Path(p)
        if Run(p).finished:
            runs.append(Run(p))
        elif p.is_dir():
            found = finished_runs(p)
            if not found:
                raise HmicError(f"no finished runs under {p}")
            runs.extend(found)
        else:
            raise HmicError(f"{p} does not exist")
    return runs


def latest_tuned_run(runs_dir: str | Path) -> Run:
    """The most recently finished run that has tuned thresholds and a best checkpoint. None there: an
    error naming the folder searched, tuned runs found elsewhere under the working directory, and the
    ways to get a model."""
    candidates = [Run(p.parent) for p in Path(runs_dir).rglob(THRESHOLDS)]
    candidates = [r for r in candidates if r.best_path.exists()]
    if not candidates:
        elsewhere = tuned_runs_near(Path.cwd(), exclude=Path(runs_dir))
        found = ""
        if elsewhere:
            shown = ", ".join(os.path.relpath(r.folder) for r in elsewhere[:5])
            more = f" and {len(elsewhere) - 5} more" if len(elsewhere) > 5 else ""
            found = f"; tuned runs found elsewhere here: {shown}{more} (pass one with --run, or its folder with --runs-dir)"
        raise HmicError(f"no run with tuned thresholds under {Path(runs_dir).resolve()}{found}; to get a model: "
                        f"'hmic download cnn14' then 'hmic predict --model audioset' (AudioSet's tagger), {demo_hint()}, "
                        "or train one ('hmic train', then 'hmic tune-thresholds RUN')")
    return max(candidates, key=lambda r: r.done_path.stat().st_mtime if r.finished else 0)


def demo_hint() -> str:
    """Where ``make demo``'s song model is, by absolute path when hmic runs from a checkout (so that the
    hint holds from any working directory); the checkout is the folder holding hmic/ and the Makefile."""
    checkout = Path(__file__).resolve().parents[2]
    if not (checkout / "Makefile").is_file():
        return "'make demo' in an hmic checkout (a stand-in demonstration model in its data/demo/song-runs)"
    song_runs = checkout / "data" / "demo" / "song-runs"
    tuned = [p.parent for p in song_runs.rglob(THRESHOLDS)] if song_runs.is_dir() else []
    if tuned:
        return f"the stand-in demonstration model 'make demo' trained (--run {max(tuned, key=lambda p: p.stat().st_mtime)})"
    return f"'make demo' in {checkout} (a stand-in demonstration model in {song_runs})"


SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", ".tox", ".mypy_cache", ".pytest_cache"}


def tuned_runs_near(root: Path, max_depth: int = 6, exclude: Path | None = None, limit: int = 200,
                    max_folders: int = 5000) -> list[Run]:
    """Run folders with tuned thresholds and best.pt below ``root``, at most ``max_depth`` levels down
    (``make demo``'s data/demo/song-runs/gmp/lam0.80/seed0 is 6), skipping virtual environments, .git and
    hidden folders, looking into at most ``max_folders`` folders (a bounded search); newest first."""
    found: list[Run] = []
    skip = exclude.resolve() if exclude is not None and exclude.exists() else None
    visited = [0]

    def walk(folder: Path, depth: int) -> None:
        visited[0] += 1
        if len(found) >= limit or visited[0] > max_folders:
            return
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            return
        names = {e.name for e in entries}
        if THRESHOLDS in names and "best.pt" in names:
            found.append(Run(folder))
            return
        if depth >= max_depth:
            return
        for e in entries:
            if e.is_dir() and not e.is_symlink() and e.name not in SKIP_DIRS and not e.name.startswith("."):
                if skip is not None and e.resolve() == skip:
                    continue
                walk(e, depth + 1)

    walk(Path(root), 0)
    return sorted(found, key=lambda r: r.thresholds_path.stat().st_mtime, reverse=True)


def by_method(runs: list[Run]) -> dict[str, list[Run]]:
    """Finished runs grouped by the method in their config.json, in the order first seen."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.method, []).append(run)
    return groups
