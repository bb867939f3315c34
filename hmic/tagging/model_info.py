"""Which model tagged (``hmic predict``'s header, and every JSON/CSV result): the run folder or file,
method, backbone, protocol, the data it was trained on and its validation scores, with a one-line notice
for a demonstration model (trained on the rendered stand-in, or on fewer than ``DEMO_CLIPS`` clips).
Read from what training and tune-thresholds stored (``hmic.runs.trained_on``); an older run gets what
can be derived (config.json, the dataset folder if it is still there) and "unknown" for the rest.
Nothing branches on it: it is only reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hmic.runs.trained_on import is_stand_in, read_trained_on, split_train_count

DEMO_CLIPS = 300  # a model trained on fewer clips than this is a demonstration model
UNKNOWN = "unknown"
DEMO_NOTICE = ("demonstration model ({why}), not a tagger for real music: for real recordings use "
               "'hmic predict --model audioset' (after 'hmic download cnn14'), or train on OpenMIC-2018 ('make table1')")


def describe_model(source: str | Path, config: dict | None, thresholds: dict | None, method: str) -> dict:
    """Which model tagged: source (run folder or file), method, backbone, protocol, the data it was trained
    on (dataset name, train clips, stand-in or not) and its validation scores; "unknown" where an older
    run or file does not say. ``notice``: the one-line demonstration-model notice, or None."""
    source = Path(source)
    folder = source.parent if source.is_file() else source  # a checkpoint or ONNX file: the folder it lies in
    config = config or {}
    stored = (thresholds or {}).get("trained_on") or read_trained_on(folder)
    data_dir = (stored or {}).get("data_dir") or config.get("data_dir")
    stand_in = (stored or {}).get("stand_in") if stored else (is_stand_in(data_dir) if data_dir else None)
    train_clips = ((stored or {}).get("clips") or {}).get("train")
    if train_clips is None and data_dir and Path(data_dir).is_dir():
        train_clips = split_train_count(data_dir, config.get("work_dir"))
    dataset = (stored or {}).get("dataset") or (Path(data_dir).name if data_dir else None)
    validation = (thresholds or {}).get("validation") or _validation_from_run(folder, thresholds)
    info = {"model": str(folder if source.name == "best.pt" else source), "method": method, "backbone": config.get("arch") or UNKNOWN,
            "protocol": config.get("protocol") or ("finetune" if config else UNKNOWN),
            "dataset": dataset or UNKNOWN, "train_clips": train_clips if train_clips is not None else UNKNOWN,
            "stand_in": stand_in if stand_in is not None else UNKNOWN, "validation": validation or UNKNOWN}
    why = []
    if stand_in is True:
        why.append("trained on the rendered General MIDI stand-in")
    if isinstance(train_clips, int) and train_clips < DEMO_CLIPS:
        why.append(f"{train_clips} training clips")
    info["notice"] = DEMO_NOTICE.format(why=", ".join(why)) if why else None
    return info


def _validation_from_run(folder: Path, thresholds: dict | None) -> dict | None:
    """An older run's validation scores, from its predictions_val.npz (None without one)."""
    path = folder / "predictions_val.npz"
    if thresholds is None or not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            pred = {k: z[k] for k in z.files}
        from hmic.evaluation.scoring import validation_scores

        return validation_scores(pred, thresholds)
    except Exception:  # noqa: BLE001 - a description must never stop a prediction
        return None
