"""File helpers every stage shares: atomic writes, JSON Lines, CSV, MD5.

Atomic: a reader never sees a half-written file, and a crash never destroys the old one.
(Named ``fileio`` so that it never shadows the standard library's ``io``.)
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

CHUNK = 1 << 20


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's (or a folder's) data and metadata to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``, durably: the
    temporary file is fsynced before the rename and the folder after it (as SQLite and pip do), so
    that after a power loss ``path`` is the old file or the new one, never an empty one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        fsync_path(tmp_path)
        os.replace(tmp_path, path)
        try:
            fsync_path(path.parent)
        except OSError as e:  # a few file systems cannot fsync a folder; the rename has happened
            if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
                raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one JSON line and fsync it (a killed run loses at most the line being written)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj) + "\n")
        f.flush()
        os.fsync(f.fileno())


def trim_partial_line(path: str | os.PathLike) -> bool:
    """Cut a last line that has no newline (a write interrupted by a kill); True if one was cut."""
    with open(path, "rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return False
        f.truncate(data.rfind(b"\n") + 1)
        return True


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Every row of a JSON Lines file. A last line without its newline (cut by a kill) is ignored; any
    other line that is not JSON is an error naming its line number, never a silent stop."""
    from hmic.errors import HmicError

    rows = []
    p = Path(path)
    if not p.exists():
        return rows
    text = p.read_text(encoding="utf-8")
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number == len(lines) and not text.endswith("\n"):  # the line a kill cut short
                break
            raise HmicError(f"{p}, line {number}: not a JSON line ({e.msg}); the file is damaged: repair or "
                            "remove that line (every other line is kept)") from None
    return rows


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A CSV document (header + rows, '\\n' line ends) as a string."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    write_text(path, csv_text(header, rows))


def md5_file(path: str | os.PathLike) -> str:
    """Hex MD5 of a file, read in 1 MiB blocks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()
