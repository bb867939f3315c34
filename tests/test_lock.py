"""The install: requirements.lock against the venv and pyproject.toml, and a broken torch/torchaudio pair as
one clear error (docs/installation.md, "The lock")."""

import ast
import importlib.metadata as md
import importlib.util
import json
import os
import subprocess
import sys
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from hmic.errors import HmicError
from hmic.environment import check_torch_stack, locked_version

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("lock_tool", ROOT / "tools" / "lock.py")
lock_tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock_tool)


def test_this_venv_equals_the_lock():
    problems = lock_tool.drift(lock_tool.read_lock(), lock_tool.installed())
    assert problems == [], "run 'make install': " + "; ".join(problems)


def test_drift_names_each_package_that_differs():
    lock = {"torch": ("2.11.0", None), "torchaudio": ("2.11.0", None), "numpy": ("2.4.6", None),
            "nvidia-cublas": ("13.1.0.3", 'sys_platform == "nowhere"')}
    have = {"torch": "2.11.0", "torchaudio": "2.11.1", "rich": "15.0.0"}
    assert lock_tool.drift(lock, have) == ["numpy: not installed (the lock has 2.4.6)",
                                           "torchaudio: 2.11.1 installed, the lock has 2.11.0",
                                           "rich: 15.0.0 installed, not in the lock"]  # the marker skips cublas here


def test_the_check_command_fails_naming_the_package_and_the_fix(tmp_path):
    text = (ROOT / "requirements.lock").read_text()
    drifted = tmp_path / "drifted.lock"
    drifted.write_text(text.replace(f"torchaudio=={md.version('torchaudio')} ", "torchaudio==0.0.1 "))
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "lock.py"), "check", "--lock", str(drifted)],
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert f"torchaudio: {md.version('torchaudio')} installed, the lock has 0.0.1" in out.stderr
    assert "make install" in out.stderr


def test_the_lock_pins_torch_and_torchaudio_as_one_release_and_every_line_has_hashes():
    lock = lock_tool.read_lock()
    assert lock["torch"][0] == lock["torchaudio"][0] == "2.11.0"
    blocks = (ROOT / "requirements.lock").read_text().split("\n\n", 1)[1].strip().split(" \\\n    --hash")
    assert all("sha256:" in b for b in blocks[1:])
    entries = [line for line in (ROOT / "requirements.lock").read_text().splitlines() if "==" in line]
    assert len(entries) == len(lock) and all(line.endswith(" \\") for line in entries)
    assert {"pip", "setuptools", "wheel"} <= set(lock)


def pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return [Requirement(r) for r in reqs]


def test_every_pyproject_requirement_and_extra_is_locked_within_its_range():
    lock = lock_tool.read_lock()
    for req in pyproject_requirements():
        name = lock_tool.canonical(req.name)
        assert name in lock, f"{req.name} is in pyproject.toml but not in requirements.lock: run 'make lock'"
        assert req.specifier.contains(lock[name][0], prereleases=True), f"{req} excludes the locked {lock[name][0]}"


def test_every_third_party_import_of_hmic_is_declared():
    declared = {lock_tool.canonical(r.name) for r in pyproject_requirements()} | {"tinysoundfont"}  # Makefile: --no-deps
    dists = md.packages_distributions()
    stdlib = set(sys.stdlib_module_names)
    undeclared = set()
    for path in (ROOT / "hmic").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for name in names:
                top = name.split(".")[0]
                if top in stdlib or top == "hmic":
                    continue
                owners = {lock_tool.canonical(d) for d in dists.get(top, [top])}
                if not owners & declared:
                    undeclared.add(f"{path.relative_to(ROOT)}: {top}")
    assert undeclared == set()


class Index(BaseHTTPRequestHandler):
    """A PEP 691 JSON simple index on 127.0.0.1 with two files of demo-pkg 1.0 and one of 1.1."""

    def do_GET(self):
        if self.path.rstrip("/") != "/simple/demo-pkg":
            self.send_error(404)
            return
        files = [{"filename": "demo_pkg-1.0-py3-none-any.whl", "hashes": {"sha256": "b" * 64}},
                 {"filename": "demo_pkg-1.0.tar.gz", "hashes": {"sha256": "a" * 64}},
                 {"filename": "demo_pkg-1.0.1-py3-none-any.whl", "hashes": {"sha256": "c" * 64}}]
        body = json.dumps({"name": "demo-pkg", "files": files}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.pypi.simple.v1+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_lock_hashes_are_every_file_of_exactly_that_version():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Index)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hashes = lock_tool.file_hashes(f"http://127.0.0.1:{server.server_port}/simple", "demo_pkg", "1.0")
    finally:
        server.shutdown()
    assert hashes == ["a" * 64, "b" * 64]  # not 1.0.1's


def test_a_torchaudio_that_does_not_load_is_one_error_naming_both_versions_and_the_fix():
    def broken(name):
        if name == "torchaudio":
            raise OSError("libtorchaudio.so: undefined symbol: torch_exception_get_what_without_backtrace")

    with pytest.raises(HmicError) as e:
        check_torch_stack(import_module=broken)
    text = str(e.value)
    assert f"torch {md.version('torch')} with torchaudio {md.version('torchaudio')}" in text
    assert "undefined symbol" in text and "make install" in text
    assert f"torchaudio=={locked_version('torchaudio')}" in text and "\n" not in text


def test_hmic_featurize_stops_at_once_when_torchaudio_cannot_load(synth_root, tmp_path):
    """The whole command in a subprocess whose torchaudio raises at import (as 2.11.1 beside torch 2.11.0 does)."""
    fake = tmp_path / "fake" / "torchaudio"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise OSError("libtorchaudio.so: undefined symbol: '
                                      'torch_exception_get_what_without_backtrace")\n')
    work = tmp_path / "work"
    env = {**os.environ, "PYTHONPATH": f"{fake.parent}{os.pathsep}{ROOT}", "COLUMNS": "300"}
    out = subprocess.run([sys.executable, "-m", "hmic", "featurize", "--data-dir", str(synth_root), "--work-dir", str(work),
                          "--workers", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2, out.stderr
    assert "torchaudio cannot be loaded" in out.stderr and "undefined symbol" in out.stderr
    assert "make install" in out.stderr and "Traceback" not in out.stderr
    assert out.stderr.count("error:") == 1
    assert not list(work.rglob("failures.csv"))  # no clip was blamed
