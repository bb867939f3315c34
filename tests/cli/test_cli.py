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


# -- issue 37: the small things a newcomer notices ---------------------------------------------------------

def test_version_option_prints_the_version():
    from hmic import __version__

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"hmic {__version__}"


@pytest.mark.parametrize("name", ("split", "predict", "import"))
def test_help_shows_no_bool_type_beside_flags(name):
    result = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "<bool>" not in result.output
    assert any("--help" in line and "Show this message" in line for line in result.output.splitlines())


def test_a_one_seed_table_shows_no_spread_and_no_significance_marker():
    from hmic.evaluation.report import to_markdown

    macro = {lv: {m: {"mean": 0.5, "std": 0.0} for m in ("roc_auc", "pr_auc", "f1")} for lv in ("fine", "coarse")}
    rows = [{"method": m, "lambda": 0.8, "seeds": 1, "protocol": "finetune",
             "aggregate": {"macro": macro, "left_out": {"fine": [], "coarse": []}},
             "versus": {"reference": "flat", "differences": [
                 {"level": "fine", "metric": "f1", "mean": 0.1, "p_holm": 0.001, "pairs": 1}]}} for m in ("flat", "gmp")]
    table = to_markdown(rows, "test").split("The paper's Table 1")[0]
    assert "± 0.0" not in table and "50.0 ± —" in table
    body = [line for line in table.splitlines() if line.startswith("| gmp")]
    assert body and "▲" not in body[0] and "▼" not in body[0]
