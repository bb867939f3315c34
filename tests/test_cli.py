import subprocess
import sys

import pytest
from typer.testing import CliRunner

from hmic.cli import app

COMMANDS = ("download", "split", "featurize", "train", "tune-thresholds", "evaluate", "predict")


def test_help_lists_every_subcommand_with_a_description():
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name in COMMANDS + ("synth", "table"):
        line = next((ln for ln in result.output.splitlines() if f" {name} " in ln), None)
        assert line is not None, name
        assert len(line.split(name, 1)[1].strip(" │")) > 10  # a one-line description


@pytest.mark.parametrize("name", COMMANDS + ("synth", "synth-song", "table"))
def test_every_subcommand_help_works(name):
    result = CliRunner().invoke(app, [name, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_unknown_option_is_typers_clear_error():
    result = CliRunner().invoke(app, ["split", "--no-such-option"])
    assert result.exit_code == 2
    assert "No such option" in result.output


def test_console_script_runs_and_reports_errors_without_traceback(tmp_path):
    exe = [sys.executable, "-m", "hmic"]
    out = subprocess.run(exe + ["split", "--data-dir", str(tmp_path / "missing")], capture_output=True, text=True)
    assert out.returncode == 2
    assert "error:" in out.stderr and "does not exist" in out.stderr and "Traceback" not in out.stderr


def test_featurize_n_mels_makes_a_store_of_that_many_bands(synth_root, tmp_path):
    import json

    from hmic.cli import app as hmic_app

    result = CliRunner().invoke(hmic_app, ["featurize", "--data-dir", str(synth_root), "--work-dir", str(tmp_path),
                                           "--n-mels", "32", "--workers", "1"])
    assert result.exit_code == 0, result.output
    (manifest,) = tmp_path.glob("features/*/manifest.json")
    assert json.loads(manifest.read_text())["frontend"]["n_mels"] == 32
    assert json.loads(manifest.read_text())["shape"][2] == 32
