"""`hmic download`: the OpenMIC-2018 archive and the CNN14 16 kHz checkpoint, from Zenodo or a mirror.

Streamed to ``<name>.part`` with a progress bar; a partial file resumes with an HTTP Range request;
the MD5 is verified before the file takes its final name; the archive is extracted only after every
entry has been checked to stay inside the target folder.
"""

from __future__ import annotations

import os
import shutil
import socket
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

from hmic.errors import HmicError
from hmic.fileio import CHUNK, md5_file

BASE_URL_ENV = "HMIC_DOWNLOAD_BASE_URL"
DOWNLOADS_DIR = "data/downloads"  # where archives are kept (``hmic download --downloads``)
CHECKPOINT_DIR = "data/checkpoints"  # where the CNN14 checkpoint goes (``--checkpoint-dir``)


@dataclass(frozen=True)
class Source:
    name: str
    url: str  # the canonical URL
    filename: str
    md5: str
    size: int | None = None  # informative only

    def url_for(self, base_url: str | None) -> str:
        """A mirror (``--base-url`` or $HMIC_DOWNLOAD_BASE_URL) serves the file as ``<base>/<filename>``."""
        base = base_url or os.environ.get(BASE_URL_ENV)
        if not base:
            return self.url
        return base.rstrip("/") + "/" + urllib.request.quote(self.filename)


OPENMIC = Source(
    "openmic",
    "https://zenodo.org/records/1432913/files/openmic-2018-v1.0.0.tgz?download=1",
    "openmic-2018-v1.0.0.tgz",
    "e4ccf187e2bb5ab2e115416e8aafe7f4",
    2_623_376_754,
)
CNN14 = Source(
    "cnn14",
    "https://zenodo.org/records/3987831/files/Cnn14_16k_mAP%3D0.438.pth?download=1",
    "Cnn14_16k_mAP=0.438.pth",
    "362fc5ff18f1d6ad2f6d464b45893f2c",
    358_668_570,
)


def default_checkpoint() -> Path:
    """Where ``hmic download cnn14`` puts the AudioSet checkpoint, and where ``hmic train`` looks for it."""
    return Path(CHECKPOINT_DIR) / CNN14.filename


def download_file(url: str, dest: Path, md5: str, console: Console | None = None, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part``; verify the MD5 before renaming.

    Returns ``dest``. Raises HmicError (one line: the cause and how to retry) on network errors and on
    a checksum mismatch, in which case nothing is left under ``dest`` or ``dest.part``.
    """
    console = console or Console(stderr=True)
    dest = Path(dest)
    if dest.exists():
        if md5_file(dest) == md5:
            console.print(f"[green]✓[/] {dest} already downloaded (MD5 ok), skipping")
            return dest
        raise HmicError(f"{dest} exists but its MD5 is not {md5}; delete it and run the download again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "hmic"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    retry = f"run the same 'hmic download' again to resume from {part}"
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the .part is already complete
            response = None
        else:
            raise HmicError(f"download of {url} failed: HTTP {e.code} {e.reason}; check the URL/mirror and retry") from None
    except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise HmicError(f"download of {url} failed: {reason}; check the network and {retry}") from None
    if response is not None:
        with response:
            status = getattr(response, "status", 200)
            if offset and status != 206:  # the server ignored the Range: start again
                console.print(f"[yellow]server does not resume; restarting {dest.name} from 0[/]")
                offset = 0
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else None
            mode = "ab" if offset else "wb"
            columns = ("[bold]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
            with open(part, mode) as out, Progress(*columns, console=console, transient=False) as progress:
                task = progress.add_task(dest.name, total=total, completed=offset)
                try:
                    while True:
                        block = response.read(CHUNK)
                        if not block:
                            break
                        out.write(block)
                        progress.advance(task, len(block))
                except (OSError, socket.timeout, ConnectionError) as e:
                    out.flush()
                    raise HmicError(f"download of {url} interrupted ({e}); {part.stat().st_size if part.exists() else 0} bytes kept, {retry}") from None
            if total is not None and part.stat().st_size < total:
                raise HmicError(f"download of {url} ended early ({part.stat().st_size} of {total} bytes); {retry}")
    got = md5_file(part)
    if got != md5:
        part.unlink()
        raise HmicError(
            f"checksum mismatch for {dest.name}: MD5 {got}, expected {md5}. The file was deleted; "
            "nothing was written under its final name. Check the mirror (--base-url) and download again."
        )
    os.replace(part, dest)
    console.print(f"[green]✓[/] {dest} (MD5 {md5} verified)")
    return dest


ESCAPE = "the archive tried to escape its folder; refusing to extract anything"


def check_members(members: list[tarfile.TarInfo]) -> None:
    """Refuse, before anything is written, every entry that could land outside the target folder:
    absolute paths, '..' components, devices, links whose target (taken from the link's own folder,
    through the links the archive itself makes) leaves the folder, and any entry whose path runs
    through a link of the archive (``x -> .`` then ``x/y -> ..``: each harmless alone, an escape
    together), since where such an entry lands depends on the link, not on its name."""
    links: set[PurePosixPath] = set()
    for member in members:
        name = member.name
        path = PurePosixPath(name)
        if name.startswith(("/", "\\")) or path.is_absolute() or (len(name) > 1 and name[1] == ":"):
            raise HmicError(f"archive entry {name!r} has an absolute path: {ESCAPE}")
        if ".." in path.parts:
            raise HmicError(f"archive entry {name!r} uses '..': {ESCAPE}")
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            raise HmicError(f"archive entry {name!r} is not a file, folder or link; refusing to extract anything")
        through = next((parent for parent in path.parents if parent in links), None)
        if through is not None:
            raise HmicError(f"archive entry {name!r} lies through the link {str(through)!r}: {ESCAPE}")
        if member.issym() or member.islnk():
            link = member.linkname
            base = path.parent if member.issym() else PurePosixPath(".")
            target = PurePosixPath(os.path.normpath(str(base / link)))
            if PurePosixPath(link).is_absolute() or target.parts[:1] == ("..",):
                raise HmicError(f"archive entry {name!r} links to {link!r}, outside the target folder: {ESCAPE}")
            hops = [target, *target.parents]
            if any(h in links for h in hops):
                raise HmicError(f"archive entry {name!r} links to {link!r} through another link of the archive: {ESCAPE}")
            links.add(path)


def safe_extract(archive: Path, target: Path, console: Console | None = None) -> None:
    """Extract a tar archive into ``target`` after checking every entry stays inside it."""
    console = console or Console(stderr=True)
    target = Path(os.path.abspath(target))
    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            check_members(members)
            with Progress(console=console, transient=True) as progress:
                task = progress.add_task(f"extracting {archive.name}", total=len(members))
                for m in members:
                    tar.extract(m, target, filter="data")
                    progress.advance(task)
    except (tarfile.TarError, EOFError) as e:
        raise HmicError(f"{archive} is not a readable tar archive ({e}); delete it and download again") from None


def fetch_openmic(data_dir: Path, downloads: Path, base_url: str | None = None, source: Source = OPENMIC,
                  console: Console | None = None) -> Path:
    """Download and extract the OpenMIC archive so that ``data_dir`` is the dataset root."""
    console = console or Console(stderr=True)
    data_dir = Path(data_dir)
    marker = data_dir / ".hmic-extracted"
    if marker.exists():
        console.print(f"[green]✓[/] {data_dir} already extracted, skipping")
        return data_dir
    archive = download_file(source.url_for(base_url), Path(downloads) / source.filename, source.md5, console)
    staging = data_dir.parent / f".{data_dir.name}.extracting"
    if staging.exists():
        shutil.rmtree(staging)
    safe_extract(archive, staging, console)
    entries = [p for p in staging.iterdir()]
    # The release holds one root folder (openmic-2018/); use its content as the dataset root.
    root = entries[0] if len(entries) == 1 and entries[0].is_dir() else staging
    if data_dir.exists():
        if any(data_dir.iterdir()):
            shutil.rmtree(staging)
            raise HmicError(f"{data_dir} exists and is not empty but was not extracted by hmic; move it away or pass --data-dir")
        data_dir.rmdir()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(root, data_dir)
    if staging.exists():
        shutil.rmtree(staging)
    marker.write_text(f"{source.filename} {source.md5}\n")
    console.print(f"[green]✓[/] OpenMIC-2018 extracted to {data_dir}")
    return data_dir


def fetch_checkpoint(dest_dir: Path, base_url: str | None = None, source: Source = CNN14,
                     console: Console | None = None) -> Path:
    return download_file(source.url_for(base_url), Path(dest_dir) / source.filename, source.md5, console)
