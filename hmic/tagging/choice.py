"""Which model ``hmic predict`` tags with: a run folder or file given with ``--run``, the ready AudioSet
model (``--model audioset``), or, with neither, the latest run with tuned thresholds under the runs
folder, else the AudioSet model when the CNN14 checkpoint of ``hmic download cnn14`` is there (said in
one line), else an error naming the folder searched, runs found nearby and every way to get a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from hmic.errors import HmicError


def choose_model(run: Path | None, runs_dir: Path, model: str | None, checkpoint: Path | None = None,
                 audioset_map: Path | None = None, hierarchy: Path | None = None,
                 say: Callable[[str], None] = print) -> tuple[Path | None, str | None]:
    """(a run folder or file, or None for the ready AudioSet model; the ready model asked or fallen back
    to, else None). ``checkpoint``, ``audioset_map`` and ``hierarchy`` build the ready model and go with it
    alone; ``say`` reports a fallback."""
    if run is not None and model is None and not (checkpoint or audioset_map or hierarchy):
        return run, None  # a run given: nothing else to choose (and no torch to import: --backend onnx)
    from hmic.data.download import default_checkpoint
    from hmic.models.heads import READY_MODEL
    from hmic.runs.run import latest_tuned_run

    if model is not None and model != READY_MODEL:
        raise HmicError(f"--model {model!r} is unknown; the ready model is {READY_MODEL!r} (a trained run goes to --run)")
    if model is None and (checkpoint or audioset_map or hierarchy):
        raise HmicError(f"--checkpoint, --audioset-map and --hierarchy go with --model {READY_MODEL}")
    if run is not None and (checkpoint or audioset_map or hierarchy):
        raise HmicError("--checkpoint, --audioset-map and --hierarchy build the AudioSet model without a run; "
                        f"a {READY_MODEL} run (--run) holds its own")
    if run is not None or model == READY_MODEL:
        return run, model
    try:
        run = latest_tuned_run(runs_dir).folder
    except HmicError:
        if not default_checkpoint().is_file():
            raise  # its message names the folder searched, runs nearby and every way to get a model
        say(f"no run with tuned thresholds under {runs_dir}: tagging with the AudioSet classifier of "
            f"{default_checkpoint()} (no training; --model {READY_MODEL})")
        return None, READY_MODEL
    say(f"using the latest run with tuned thresholds: {run}")
    return run, None
