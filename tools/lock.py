"""requirements.lock: write it from a working venv (``make lock``) and check a venv against it.

    python tools/lock.py write [--index-url URL]   # freeze this interpreter's packages, add every file's sha256
    python tools/lock.py check                     # exit 1 naming each package that differs from the lock
    python tools/lock.py extras                    # installed packages the lock does not have

The lock pins every package ``make install`` installs (hmic's dependencies, those of all its extras,
pip, setuptools and wheel) with ``==`` and the sha256 of every file the index holds for that version
(all platforms and Python versions, as pip-compile's --generate-hashes does), so that ``pip install
--require-hashes --no-deps -r requirements.lock`` installs exactly what was tested, or fails. Packages
that only Linux needs (the CUDA libraries torch pulls in there) carry a ``sys_platform == "linux"``
marker. The hashes come from the index's JSON simple API (PEP 691); the index is pip's own (its
``index-url`` setting, or pip's default), never a host written here. Standard library only for
``write``; ``check`` also uses ``packaging`` (installed in every hmic venv).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
import sysconfig
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
PROJECT = "hmic"
ALWAYS = ("pip", "setuptools", "wheel")  # the installers themselves: pinned too
LINUX_MARKER = 'sys_platform == "linux"'
LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*(?:\\)?$")
FIX = "make install (it installs requirements.lock into .venv)"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ----------------------------------------------------------------------------------------------
# reading and checking


def read_lock(path: Path = LOCK) -> dict[str, tuple[str, str | None]]:
    """{canonical name: (version, marker or None)} from a lock file (hash lines are skipped)."""
    pins: dict[str, tuple[str, str | None]] = {}
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "--hash")):
            continue
        m = LINE.match(line)
        if not m:
            raise ValueError(f"{path}: cannot read the line {raw!r}")
        pins[canonical(m.group(1))] = (m.group(2), m.group(3))
    return pins


def installed() -> dict[str, str]:
    """{canonical name: version} of the distributions installed in this interpreter's site-packages (hmic
    itself left out). Only site-packages: Ray puts its vendored copies (psutil, colorama) on sys.path."""
    found = {}
    paths = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    for dist in md.distributions(path=paths):
        name = dist.metadata["Name"]
        if name and canonical(name) != PROJECT:
            found[canonical(name)] = dist.version
    return found


def applies(marker: str | None) -> bool:
    if not marker:
        return True
    from packaging.markers import Marker

    return Marker(marker).evaluate()


def drift(lock: dict[str, tuple[str, str | None]], have: dict[str, str]) -> list[str]:
    """One line per package whose installed version differs from the lock, is missing or is extra."""
    problems = []
    for name, (version, marker) in sorted(lock.items()):
        if not applies(marker):
            continue
        if name not in have:
            problems.append(f"{name}: not installed (the lock has {version})")
        elif have[name] != version:
            problems.append(f"{name}: {have[name]} installed, the lock has {version}")
    for name in sorted(set(have) - set(lock)):
        problems.append(f"{name}: {have[name]} installed, not in the lock")
    return problems


def check(path: Path = LOCK) -> int:
    problems = drift(read_lock(path), installed())
    if not problems:
        print(f"{sys.prefix}: every package equals {path.name} ({len(installed())} packages)")
        return 0
    print(f"{sys.prefix} differs from {path.name}:", file=sys.stderr)
    for p in problems:
        print(f"  {p}", file=sys.stderr)
    print(f"fix: {FIX}; a deliberate upgrade: pip install it into the venv, then 'make lock' and commit the lock",
          file=sys.stderr)
    return 1


# ----------------------------------------------------------------------------------------------
# writing


def default_index() -> str:
    """pip's index: its ``index-url`` setting (environment or config files), else pip's built-in default."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"]
    out = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"], capture_output=True, text=True)
    if out.returncode == 0 and out.stdout.strip():
        return out.stdout.strip()
    from pip._internal.models.index import PyPI  # pip's own default; no host is spelled here

    return PyPI.simple_url


def file_hashes(index: str, name: str, version: str, timeout: float = 60.0) -> list[str]:
    """sha256 of every file of ``name`` ``version`` on a PEP 691 (JSON simple API) index."""
    url = f"{index.rstrip('/')}/{canonical(name)}/"
    request = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        files = json.load(response)["files"]
    spelled = "[-_.]".join(map(re.escape, canonical(name).split("-")))  # file names spell - as _ or .
    stem = re.compile(rf"^{spelled}-{re.escape(version)}(-|\.tar\.gz$|\.zip$)", re.IGNORECASE)
    hashes = sorted({f["hashes"]["sha256"] for f in files if stem.match(f["filename"]) and "sha256" in f.get("hashes", {})})
    if not hashes:
        raise SystemExit(f"{url}: no file of {name} {version} with a sha256 (is the version on this index?)")
    return hashes


def linux_only(names: set[str]) -> set[str]:
    """Packages that are only required under a Linux marker (directly, or through such packages)."""
    edges: dict[str, list[tuple[str, bool]]] = {n: [] for n in names}  # child -> [(parent, edge is linux-only)]
    for dist in md.distributions():
        parent = canonical(dist.metadata["Name"] or "")
        for req in dist.requires or []:
            child = canonical(re.split(r"[\s\[;(<>=!~]", req, maxsplit=1)[0])
            if child in edges and child != parent:
                marker = req.split(";", 1)[1] if ";" in req else ""
                edges[child].append((parent, "linux" in marker.lower()))
    roots = {PROJECT, *ALWAYS}
    only: set[str] = set()
    changed = True
    while changed:
        changed = False
        for child, parents in edges.items():
            if child in only or child in roots or not parents:
                continue
            if all(linux or parent in only for parent, linux in parents if parent in names | {PROJECT}):
                if any(parent in names | {PROJECT} for parent, _ in parents):
                    only.add(child)
                    changed = True
    return only


def write(path: Path = LOCK, index: str | None = None) -> None:
    index = index or default_index()
    pins = dict(sorted(installed().items()))
    only = linux_only(set(pins))
    out = ["# requirements.lock: every package 'make install' installs, exact versions and file hashes.",
           "# Written by 'make lock' (tools/lock.py write) from a working .venv; never edit by hand.",
           f"# Made with Python {sys.version.split()[0]} on {sys.platform}; {len(pins)} packages.", ""]
    for i, (name, version) in enumerate(pins.items()):
        print(f"[{i + 1}/{len(pins)}] {name}=={version}", file=sys.stderr)
        hashes = file_hashes(index, name, version)
        marker = f" ; {LINUX_MARKER}" if name in only else ""
        out.append(f"{name}=={version}{marker} \\")
        out += [f"    --hash=sha256:{h}" + (" \\" if j < len(hashes) - 1 else "") for j, h in enumerate(hashes)]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(out) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    print(f"written {path}: {len(pins)} packages, {len(only)} for Linux only", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="freeze this interpreter's packages into the lock, with hashes")
    w.add_argument("--index-url", default=None, help="a PEP 691 simple index (default: pip's)")
    w.add_argument("--lock", type=Path, default=LOCK)
    for name, text in (("check", "compare this interpreter's packages with the lock"),
                       ("extras", "print the installed packages the lock does not have (for pip uninstall)")):
        sub.add_parser(name, help=text).add_argument("--lock", type=Path, default=LOCK)
    args = parser.parse_args(argv)
    if args.command == "write":
        write(args.lock, args.index_url)
        return 0
    if args.command == "extras":
        print("\n".join(sorted(set(installed()) - set(read_lock(args.lock)))))
        return 0
    return check(args.lock)


if __name__ == "__main__":
    sys.exit(main())
