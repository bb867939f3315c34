"""The README's commands and code run as written: every `hmic` line parses with the real command line
(an unknown command or option fails), every `make` target it names exists, the cheap commands run on
tiny data with the output the README shows, and its Python example runs."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from hmic.cli import app

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")

# Options the README shows before the branch that adds them is merged: (command, option) → who adds it.
# A line using one is still parsed; only the parser's "No such option" for exactly that option is let
# through, so once the option exists the line is checked like any other.
AWAITING_MERGE: dict[tuple[str, str], str] = {}  # (command, option) a README line may name before it lands


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def hmic_lines() -> list[list[str]]:
    """Every `hmic ...` command of the README's bash blocks, as argv after `hmic` (chains split on &&)."""
    commands = []
    for block in blocks("bash"):
        for line in block.splitlines():
            for part in line.split("#", 1)[0].split("&&"):
                words = shlex.split(part)
                if words and words[0].endswith("hmic") and "/" not in words[0].replace(".venv/bin/", ""):
                    commands.append(words[1:])
    return commands


def inline_hmic_spans() -> list[list[str]]:
    """Every `hmic ...` code span in the README's prose (outside code blocks), as argv after `hmic`."""
    prose = re.sub(r"```.*?```", "", README, flags=re.S)
    return [shlex.split(span)[1:] for span in re.findall(r"`(hmic [^`]+)`", prose)]


def make_targets_named() -> set[str]:
    named = set()
    for block in blocks("bash"):
        for line in block.splitlines():
            for part in line.split("#", 1)[0].split("&&"):
                words = shlex.split(part)
                if words[:1] == ["make"]:
                    named.update(w for w in words[1:] if "=" not in w)
    named.update(re.findall(r"`make ([a-z0-9-]+)", README))
    return named


def parse(argv: list[str]):
    """Parse argv as `hmic` would, without running the command: the group picks the command, the
    command's own parser checks every option and argument."""
    import typer.main

    group = typer.main.get_command(app)
    with group.make_context("hmic", list(argv), resilient_parsing=False) as ctx:
        # the command's name and its own arguments, as the group's parser split them
        words = list(getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", None) or []) + ctx.args
        name, rest = words[0], words[1:]
        command = group.get_command(ctx, name)
        assert command is not None, f"no such command: hmic {name}"
        command.make_context(name, rest, parent=ctx).close()


def test_the_readme_has_commands_to_check():
    commands = hmic_lines()
    assert len(commands) >= 15
    assert {c[0] for c in commands} >= {"predict", "train", "import", "split", "featurize", "embed", "download",
                                        "tune-thresholds"}


@pytest.mark.parametrize("argv", hmic_lines(), ids=lambda a: " ".join(a)[:60])
def test_every_readme_hmic_line_parses(argv):
    try:
        parse(argv)
    except Exception as e:  # the vendored click's UsageError, NoSuchOption, BadParameter ...
        message = getattr(e, "format_message", lambda: str(e))()
        pending = [opt for (cmd, opt) in AWAITING_MERGE if argv[0] == cmd and f"No such option: {opt}" in message]
        if pending and pending[0] in argv:
            pytest.skip(f"{pending[0]} arrives with {AWAITING_MERGE[(argv[0], pending[0])]}")
        raise AssertionError(f"README: `hmic {' '.join(argv)}` does not parse: {message}") from None


@pytest.mark.parametrize("argv", inline_hmic_spans(), ids=lambda a: " ".join(a)[:60])
def test_every_hmic_command_named_in_the_prose_exists_with_its_options(argv):
    """Prose may name a command without its arguments (`hmic import`); its name and options must exist."""
    try:
        parse(argv)
    except Exception as e:
        message = getattr(e, "format_message", lambda: str(e))()
        if not message.startswith("Missing argument"):
            raise AssertionError(f"README: `hmic {' '.join(argv)}` does not parse: {message}") from None


def test_the_parser_check_catches_a_wrong_line():
    with pytest.raises(Exception, match="No such option"):
        parse(["predict", "song.wav", "--no-such-option"])
    with pytest.raises(Exception):
        parse(["no-such-command"])


def test_every_make_target_the_readme_names_exists():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    defined = set(re.findall(r"^([a-z0-9][a-z0-9-]*):", makefile, flags=re.M))
    named = make_targets_named()
    assert {"demo", "test", "table1", "docs"} <= named
    assert named - defined == set()


def test_the_readme_links_only_to_files_that_exist():
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def test_the_readme_stays_a_front_door():
    lines = README.splitlines()
    assert len(lines) <= 300
    # nothing dated, no CPU names, no figures that change with every commit
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", README)
    assert not re.search(r"EPYC|Xeon|avx512|Ryzen|Core i\d", README, flags=re.I)
    assert not re.search(r"\b\d+ tests\b", README)
    titles = [line for line in lines if line.startswith("## ")]
    assert titles == ["## Set up", "## Quick starts", "## Results", "## Documentation", "## Citation", "## Licence"]


def test_the_import_quick_start_gives_the_output_shown(tmp_path, monkeypatch):
    """The README's manifest and hierarchy, imported as written, print what the README shows."""
    csv_block = blocks("csv")[0]
    yaml_block = blocks("yaml")[0]
    shown = README.split("that implies", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    seconds = {"take01": 25, "take02": 8, "take03": 40}  # as the README says
    mine = tmp_path / "project"
    for name, length in seconds.items():
        (mine / "sessions").mkdir(parents=True, exist_ok=True)
        noise = np.random.default_rng(length).standard_normal(16_000 * length).astype(np.float32) * 0.1
        sf.write(mine / "sessions" / f"{name}.wav", noise, 16_000)
    (mine / "manifest.csv").write_text(csv_block)
    (mine / "hierarchy.yaml").write_text(yaml_block)
    line = next(c for c in hmic_lines() if c[0] == "import")
    monkeypatch.chdir(mine)
    result = CliRunner().invoke(app, line, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    printed = " ".join(result.output.split())
    for shown_line in shown.strip().splitlines():
        assert " ".join(shown_line.split()) in printed
    assert (mine / "data" / "mine" / "clips.csv").exists()


def test_the_tag_a_song_quick_start_runs_on_a_trained_run(trained, tmp_path, monkeypatch):
    """`hmic predict song.wav --run data/demo/song-runs/... --explain --truth song.truth.json`, with a tiny
    trained run in the demo's place and a rendered song with its truth."""
    line = next(c for c in hmic_lines() if c[0] == "predict" and "--truth" in c)
    run_arg = line[line.index("--run") + 1]
    monkeypatch.chdir(tmp_path)
    (tmp_path / run_arg).parent.mkdir(parents=True)
    os.symlink(trained["summaries"]["gmp"]["run"], tmp_path / run_arg)
    song = CliRunner().invoke(app, ["synth-song", line[1], "--seconds", "25", "--seed", "1"])
    assert song.exit_code == 0, song.output
    result = CliRunner().invoke(app, line, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "against its truth" in result.output and "sections right" in result.output


def test_the_readme_python_example_runs_as_written(trained, tmp_path, monkeypatch, capsys):
    block = blocks("python")[0]
    work = tmp_path / "cwd"
    (work / "runs" / "gmp" / "lam0.80").mkdir(parents=True)
    os.symlink(trained["summaries"]["gmp"]["run"], work / "runs" / "gmp" / "lam0.80" / "seed0")
    rng = np.random.default_rng(7)
    for name, seconds in {"song.wav": 12.0, "music/a.wav": 4.0, "music/sub/b.flac": 18.0}.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(work / name, rng.standard_normal(int(22_050 * seconds)).astype(np.float32) * 0.1, 22_050)
    monkeypatch.chdir(work)
    exec(compile(block, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed] == ["song.wav", "music/a.wav", "music/sub/b.flac"]
    assert all("[" in line for line in printed)
    assert len((work / "tags.jsonl").read_text().splitlines()) == 3
    assert sorted(str(p.relative_to(work / "labels")) for p in (work / "labels").rglob("*.txt")) == [
        "a.wav.txt", "song.wav.txt", "sub/b.flac.txt"]


def test_the_results_table_is_the_committed_raw_output():
    """The README's stand-in columns (mean ± std, ▲/▼ at 5% after Holm) are those of the raw table the
    measurements page cites, figure for figure."""
    import csv

    raw = ROOT / "benchmarks" / "results" / "2026-12-01-amd-epyc-2core-standin-frozen-table1.csv"
    with raw.open(newline="") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    table = README.split("## Results", 1)[1].split("\n\n| method |", 1)[1].split("\n\n", 1)[0]
    shown = [line.strip("|").split("|") for line in table.splitlines()[2:]]
    assert [cells[0].strip() for cells in shown] == list(rows)

    def cell(row: dict, metric: str) -> str:
        text = f"{float(row[metric + '_mean']):.1f} ± {float(row[metric + '_std']):.1f}"
        diff, p = row.get(f"{metric}_vs_reference_diff"), row.get(f"{metric}_vs_reference_p_holm")
        if diff and p and float(p) < 0.05:
            text += " ▲" if float(diff) > 0 else " ▼"
        return text

    for cells in shown:
        row = rows[cells[0].strip()]
        assert [c.strip() for c in cells[1:4]] == [cell(row, m) for m in ("fine_roc_auc", "coarse_roc_auc", "coarse_pr_auc")]
