"""``hmic import``: your own labelled audio, from a CSV manifest, into hmic's dataset layout.

Manifest columns (docs/own-data.md):

    path            an audio file (relative to the manifest's folder, or absolute)
    start, end      optional: a stretch of the file, in seconds (blank: the whole file / to its end)
    group           optional: artist, album, session... clips of one group never straddle train and
                    test (nor train and validation in ``hmic split``); without it, each file is a group
    split           optional: train or test, for every row; without it, groups are drawn into about
                    75% train / 25% test (seeded)
    <tag>...        one column per fine tag of the hierarchy: 1 (present), 0 (absent), blank (not observed)

The output is the OpenMIC layout that every other command reads, plus ``clips.csv`` (each clip as a
stretch of a linked file) and ``groups.csv``. Audio is linked (``--copy``: copied), never modified. A
stretch longer than a clip is cut into clips (one every clip length, the last one ending at the
stretch's end, like ``hmic predict``'s windows); the row's labels then apply to every clip: weak labels.
"""

from __future__ import annotations

import csv
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hmic.audio.decoding import decoder_stderr_silenced, window_starts
from hmic.data.openmic import CLASS_MAP, CLIPS_CSV, GROUPS_CSV, LABELS_CSV, LABELS_HEADER, TEST_PARTITION, TRAIN_PARTITION
from hmic.errors import HmicError
from hmic.fileio import write_csv, write_json, write_text
from hmic.data.hierarchy import Hierarchy

RESERVED = ("path", "start", "end", "group", "split")
MAX_LISTED = 20  # problems listed in one error


@dataclass
class Row:
    line: int
    path: Path
    start: float
    end: float | None
    group: str
    split: str
    labels: dict[str, int] = field(default_factory=dict)  # tag -> 1/0 (observed only)


def _problems(title: str, items: list[str]) -> HmicError:
    shown = "\n  ".join(items[:MAX_LISTED])
    more = f"\n  ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return HmicError(f"{title}:\n  {shown}{more}")


def _rows_text(lines: list[int]) -> str:
    """'row 5' or 'rows 2-4, 9 (4 rows)': consecutive rows as ranges."""
    if len(lines) == 1:
        return f"row {lines[0]}"
    spans, start = [], lines[0]
    for prev, cur in zip(lines, lines[1:] + [None]):
        if cur != prev + 1:
            spans.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = cur
    shown = ", ".join(spans[:MAX_LISTED]) + (", ..." if len(spans) > MAX_LISTED else "")
    return f"rows {shown} ({len(lines)} rows)"


class _Problems:
    """Problems of a manifest's rows; the same problem on several rows is one line naming all its rows."""

    def __init__(self, name: str):
        self.name, self.by_message = name, {}

    def add(self, line: int, message: str) -> None:
        self.by_message.setdefault(message, []).append(line)

    def lines(self) -> list[str]:
        return [f"{self.name}, {_rows_text(rows)}, {message}" for message, rows in self.by_message.items()]

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_message.values())


def _read_text(manifest: Path) -> str:
    data = manifest.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise HmicError(f"{manifest}, row {line}: byte 0x{data[e.start]:02x} is not UTF-8 text; save the manifest as "
                        "UTF-8 (in a spreadsheet program: 'CSV UTF-8')") from None


def _csv_rows(manifest: Path, text: str) -> list[tuple[int, list[str]]]:
    """(line, fields) of every non-empty record; malformed quoting is an error naming the row."""
    import io

    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    out, line = [], 1
    try:
        for fields in reader:
            if any(f.strip() for f in fields):
                out.append((line, fields))
            line = reader.line_num + 1
    except csv.Error as e:
        raise HmicError(f"{manifest}, row {reader.line_num}: the CSV quoting is broken ({e}); a field holding a comma, "
                        "a quote or a line break must be wrapped in double quotes, with quotes inside it doubled (\"\")") from None
    return out


def labelable(hierarchy: Hierarchy) -> tuple[str, ...]:
    """The tags a manifest may label: the fine tags (leaves), and in a hierarchy deeper than the paper's
    two levels its inner nodes too (a clip labelled 'guitar' without saying which guitar)."""
    if hierarchy.is_two_level:
        return hierarchy.fine_names
    return hierarchy.fine_names + tuple(c for c in hierarchy.coarse_names if c not in hierarchy.fine_names)


def dataset_tags(hierarchy: Hierarchy, columns: list[str]) -> list[str]:
    """The imported dataset's class map: every fine tag, then the inner nodes the manifest labels."""
    return list(hierarchy.fine_names) + [c for c in columns if c in hierarchy.coarse_names
                                         and c not in hierarchy.fine_names]


def read_manifest(manifest: Path, hierarchy: Hierarchy) -> list[Row]:
    """Parse and check every row; all bad values (then all missing files) are reported together, the same
    problem on many rows once with their rows."""
    import difflib

    manifest = Path(manifest)
    if not manifest.is_file():
        raise HmicError(f"manifest {manifest} does not exist")
    records = _csv_rows(manifest, _read_text(manifest))
    if not records:
        raise HmicError(f"{manifest}: empty; the first row names the columns (path, then one column per fine tag)")
    header = [h.strip() for h in records[0][1]]
    if "path" not in header:
        raise HmicError(f"{manifest}: the header has no 'path' column (got {', '.join(header) or 'nothing'})")
    tags = [h for h in header if h not in RESERVED]
    unknown = [t for t in tags if t not in labelable(hierarchy)]
    if unknown:
        guesses = {t: difflib.get_close_matches(t.lower(), labelable(hierarchy), n=1, cutoff=0.6) for t in unknown}
        named = "; ".join(f"column {t!r} is not a fine tag" + (f" (did you mean {g[0]!r}?)" if g else "")
                          for t, g in guesses.items())
        raise HmicError(f"{manifest}: {named} of the hierarchy "
                        f"'{hierarchy.name}'; its fine tags are {', '.join(hierarchy.fine_names)}. "
                        "Rename the column, or pass --hierarchy with a hierarchy that has it")
    if not tags:
        raise HmicError(f"{manifest}: no tag columns; add one column per fine tag ({', '.join(hierarchy.fine_names)})")
    if len(set(header)) != len(header):
        raise HmicError(f"{manifest}: a column name appears twice in the header")
    rows, bad = [], _Problems(manifest.name)
    unlabelled = []
    for line, fields in records[1:]:
        if len(fields) != len(header):
            more = len(fields) > len(header)
            bad.add(line, f"{len(fields)} fields where the header has {len(header)}: "
                          + ("a field too many (an unquoted comma inside a value? wrap that value in double quotes)"
                             if more else "fields missing (give every column, blank where not observed)"))
            continue
        raw = {k: (v or "").strip() for k, v in zip(header, fields)}
        if not raw.get("path"):
            bad.add(line, "column 'path': empty")
            continue
        path = Path(raw["path"])
        row = Row(line, path if path.is_absolute() else manifest.parent / path, 0.0, None,
                  raw.get("group", ""), raw.get("split", "").lower())
        for col in ("start", "end"):
            if raw.get(col):
                try:
                    value = float(raw[col])
                    if not np.isfinite(value) or value < 0:
                        raise ValueError
                except ValueError:
                    bad.add(line, f"column {col!r}: {raw[col]!r} is not a number of seconds >= 0")
                    continue
                if col == "start":
                    row.start = value
                else:
                    row.end = value
        if row.end is not None and row.end <= row.start:
            bad.add(line, f"column 'end': {row.end:g} is not after start {row.start:g}")
        if "split" in header and row.split not in ("train", "test"):
            fix = ("; leave no row blank, or drop the 'split' column to have the split drawn by group (--test-fraction)"
                   if row.split == "" else "")
            bad.add(line, f"column 'split': {raw.get('split', '')!r} is not train or test{fix}")
        for tag in tags:
            value = raw.get(tag, "")
            if value in ("1", "0"):
                row.labels[tag] = int(value)
            elif value != "":
                bad.add(line, f"column {tag!r}: {value!r} is not 1, 0 or blank")
        if not row.labels:
            unlabelled.append(line)
        rows.append(row)
    for line in unlabelled:
        bad.add(line, "no label: every tag column is blank; give each tag 1 (present) or 0 (absent), or remove the row")
    if len(bad):
        raise _problems(f"{manifest}: {len(bad)} bad row(s)", bad.lines())
    if not rows:
        raise HmicError(f"{manifest}: no rows")
    missing = sorted({str(r.path) for r in rows if not r.path.is_file()})
    if missing:
        raise _problems(f"{manifest}: {len(missing)} audio file(s) do not exist", missing)
    return rows


def _durations(rows: list[Row]) -> dict[Path, float]:
    import soundfile as sf

    durations, unreadable = {}, []
    for path in sorted({r.path for r in rows}):
        try:
            with decoder_stderr_silenced():  # mpg123 and friends print on fd 2; the error below says it once
                info = sf.info(str(path))
            durations[path] = info.frames / info.samplerate
        except Exception as e:
            unreadable.append(f"{path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    if unreadable:
        raise _problems(f"{len(unreadable)} file(s) are not readable audio", unreadable)
    return durations


def _assign_splits(rows: list[Row], seed: int, test_fraction: float) -> None:
    """Every row's split: as given, else whole groups drawn (seeded) until ~test_fraction of clips is test."""
    groups = {}
    for r in rows:
        groups.setdefault(r.group or f"file:{r.path}", []).append(r)
    given = {r.split for r in rows}
    if given <= {"train", "test"} and "" not in given:
        for name, members in groups.items():
            if len({r.split for r in members}) > 1:
                raise HmicError(f"group {name!r} has rows in both train and test (rows "
                                f"{', '.join(str(r.line) for r in members)}); a group must stay on one side")
        return
    names = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(names))
    total = sum(len(m) for m in groups.values())
    test = 0
    for i in order:
        members = groups[names[i]]
        side = "test" if test + len(members) / 2 <= test_fraction * total else "train"
        test += len(members) if side == "test" else 0
        for r in members:
            r.split = side


def import_manifest(manifest: Path, out: Path, hierarchy: Hierarchy, copy: bool = False, seed: int = 0,
                    test_fraction: float = 0.25, clip_seconds: float = 10.0) -> dict:
    """Write the dataset; returns a summary. ``out`` must be new or empty."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise HmicError(f"{out} exists and is not empty; hmic import never overwrites. Choose another --out")
    if not 0.0 < test_fraction < 1.0:
        raise HmicError(f"--test-fraction must be between 0 and 1, got {test_fraction}")
    rows = read_manifest(manifest, hierarchy)
    durations = _durations(rows)
    for r in rows:
        if r.start >= durations[r.path]:
            raise HmicError(f"{Path(manifest).name}, row {r.line}, column 'start': {r.start:g} s is beyond the end of "
                            f"{r.path} ({durations[r.path]:.2f} s)")
    _assign_splits(rows, seed, test_fraction)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    linked: dict[Path, str] = {}
    for path in sorted(durations):
        name = f"audio/{len(linked):06d}{path.suffix.lower()}"
        if copy:
            shutil.copy2(path, out / name)
        else:
            os.symlink(path.resolve(), out / name)
        linked[path] = name
    clip_rows, label_rows, group_rows, parts = [], [], [], {"train": [], "test": []}
    weak = 0  # clips cut from a longer stretch, carrying the stretch's labels
    sr = 1000  # clip boundaries on a millisecond grid
    for i, r in enumerate(rows):
        end = min(r.end if r.end is not None else durations[r.path], durations[r.path])
        length, size = int(round((end - r.start) * sr)), int(round(clip_seconds * sr))
        starts = window_starts(length, size, size)
        weak += len(starts) if len(starts) > 1 else 0
        for j, s in enumerate(starts):
            key = f"{i:06d}_{j:04d}"
            a = r.start + s / sr
            clip_rows.append((key, linked[r.path], f"{a:.3f}", f"{min(a + clip_seconds, end):.3f}"))
            label_rows += [(key, tag, float(v), 1) for tag, v in r.labels.items()]
            group_rows.append((key, r.group or f"file:{linked[r.path]}"))
            parts[r.split].append(key)
    tags = dataset_tags(hierarchy, sorted({t for r in rows for t in r.labels}, key=labelable(hierarchy).index))
    write_json(out / CLASS_MAP, {t: i for i, t in enumerate(tags)})
    write_csv(out / LABELS_CSV, LABELS_HEADER, label_rows)
    write_csv(out / CLIPS_CSV, ["sample_key", "path", "start", "end"], clip_rows)
    write_csv(out / GROUPS_CSV, ["sample_key", "group"], group_rows)
    write_text(out / TRAIN_PARTITION, "".join(k + "\n" for k in parts["train"]))
    write_text(out / TEST_PARTITION, "".join(k + "\n" for k in parts["test"]))
    summary = {"manifest": str(manifest), "rows": len(rows), "files": len(linked), "clips": len(clip_rows),
               "train_clips": len(parts["train"]), "test_clips": len(parts["test"]),
               "groups": len({g for _, g in group_rows}), "audio": "copied" if copy else "linked",
               "clip_seconds": clip_seconds, "seed": seed, "weakly_labelled_clips": weak,
               "hierarchy": hierarchy.name, "tags": tags,
               "unlabelled_tags": [t for t in hierarchy.fine_names if not any(t in r.labels for r in rows)]}
    write_json(out / "hmic-import.json", summary)
    return summary
