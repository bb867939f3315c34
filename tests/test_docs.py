"""The documentation site: it builds with --strict (a broken link, a missing page or an unreadable
docstring fails), every page is in the navigation, the generated CLI reference is what the code gives
now, and every raw benchmark output the README or the docs cite is tracked by git."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def generator():
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "tools" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cli_reference_is_current():
    text = (DOCS / "reference" / "cli.md").read_text(encoding="utf-8")
    assert text == generator().render(), "docs/reference/cli.md is stale: run python tools/cli_reference.py"


def test_the_cli_reference_shows_every_command_and_option():
    import typer.main

    from hmic.cli import app

    group = typer.main.get_command(app)
    ctx = group.make_context("hmic", ["--help"], resilient_parsing=True)
    text = generator().render()
    for name in group.list_commands(ctx):
        assert f"\n## hmic {name}\n" in text
        section = text.split(f"\n## hmic {name}\n", 1)[1].split("\n## hmic ", 1)[0]
        for param in group.get_command(ctx, name).params:
            if param.param_type_name == "option" and param.name != "help":
                assert f"`{param.opts[0]}`" in section, f"hmic {name} {param.opts[0]} missing"


def test_the_cli_reference_is_the_same_whatever_the_machine():
    """Defaults that depend on the machine (its CPU count) are shown as their rule, not as its value."""
    code = ("import os, sys; os.cpu_count = lambda: 97; sys.path.insert(0, 'tools'); import cli_reference; "
            "sys.stdout.write(cli_reference.render())")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    other = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert "97" not in other.stdout.replace("0.97", "")
    assert other.stdout == generator().render()


def test_every_page_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in pages():
        assert str(page.relative_to(DOCS)) in nav, f"{page} is not in mkdocs.yml's nav"
    for name in ("audioset-model.md", "tracking.md", "reading-predictions.md", "reference/cli.md", "reference/api.md"):
        assert (DOCS / name).exists()


def test_every_relative_link_of_the_docs_resolves():
    """Without mkdocs installed too: every relative link of a page points to a file that exists, and
    every #anchor to a heading of that page."""
    def anchors(page: Path) -> set[str]:
        heads = re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), flags=re.M)
        return {re.sub(r"[^\w\- ]", "", h.lower()).strip().replace(" ", "-") for h in heads}

    for page in pages():
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if "://" in target or target.startswith("mailto:"):
                continue
            path, _, anchor = target.partition("#")
            where = (page.parent / path).resolve() if path else page
            assert where.exists() and where.is_relative_to(DOCS), f"{page.name}: link to {target}"
            if anchor and where.suffix == ".md" and where != DOCS / "reference" / "cli.md":
                assert anchor in anchors(where), f"{page.name}: no heading #{anchor} in {path or page.name}"


def test_the_docs_carry_no_figure_that_changes_with_every_commit():
    for page in [ROOT / "README.md", *pages()]:
        assert not re.search(r"\b\d[\d,]* tests\b", page.read_text(encoding="utf-8")), page


def cited_raw_outputs() -> set[str]:
    cited = set()
    for page in [ROOT / "README.md", *pages()]:
        cited.update(c.rstrip(".,)`") for c in re.findall(r"benchmarks/results/[A-Za-z0-9_.-]+", page.read_text(encoding="utf-8")))
    return cited


def test_every_raw_output_the_docs_cite_is_in_git():
    cited = cited_raw_outputs()
    assert len(cited) >= 5
    try:
        tracked = subprocess.run(["git", "ls-files", "benchmarks/results"], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: nothing to compare the citations with")
    assert sorted(cited - set(tracked)) == []


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    pytest.importorskip("mkdocstrings")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "NO_MKDOCS_2_WARNING": "1"}
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    assert "FileTagger" in api and "TrainConfig" in api  # mkdocstrings rendered the docstrings
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").exists()
