"""What a model was trained on and how well it did, so that a prediction can say which model tagged.

Training writes ``trained_on.json`` into the run (``record_training_data``): the dataset folder's name
and path, whether it is the rendered stand-in (``hmic synth`` leaves ``hmic-synth.json`` in its
folder), the clip counts of the split, and each tag's positive and negative training labels.
``hmic tune-thresholds`` copies it, with the validation scores, into thresholds.json and best.pt, so a
checkpoint alone still says what it is (``hmic.tagging.model_info.describe_model`` reads it back).
Nothing branches on any of this: it is only reported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hmic.fileio import read_json, write_json

TRAINED_ON = "trained_on.json"
SYNTH_MARKER = "hmic-synth.json"  # what hmic synth leaves in a dataset folder it rendered


def is_stand_in(data_dir: str | Path) -> bool | None:
    """True for a folder ``hmic synth`` rendered, False for another existing folder, None if it is gone."""
    root = Path(data_dir)
    marker = root / SYNTH_MARKER
    if marker.exists():
        try:  # written by hmic synth ("stand_in": true; older renders have the file without the key)
            return bool(read_json(marker).get("stand_in", True))
        except Exception:  # noqa: BLE001 - a damaged marker is still hmic synth's folder
            return True
    return False if root.is_dir() else None


def label_counts(targets: np.ndarray, mask: np.ndarray, names: list[str]) -> dict:
    """{tag: {"positive": n, "negative": n}} over observed entries."""
    obs = np.asarray(mask, bool)
    pos = (np.asarray(targets) > 0.5) & obs
    return {str(n): {"positive": int(pos[:, j].sum()), "negative": int((obs[:, j] & ~pos[:, j]).sum())}
            for j, n in enumerate(names)}


def record_training_data(run, data_dir: str | Path, data) -> dict:
    """Write ``trained_on.json`` into ``run`` (a ``Run``) for the training data ``data``
    (``hmic.training.data.TrainingData``: its hierarchy and parts)."""
    root = Path(data_dir)
    h, train = data.hierarchy, data.parts["train"]
    record = {"dataset": root.resolve().name, "data_dir": str(root.resolve()), "stand_in": is_stand_in(root),
              "clips": {name: len(part.keys) for name, part in data.parts.items()},
              "train_labels": {"fine": label_counts(train.fine_targets, train.fine_mask, list(h.fine_names)),
                               "coarse": label_counts(train.coarse_targets, train.coarse_mask, list(h.coarse_names))}}
    write_json(Path(run.folder) / TRAINED_ON, record)
    return record


def read_trained_on(folder: str | Path) -> dict | None:
    path = Path(folder) / TRAINED_ON
    return read_json(path) if path.exists() else None


def untrained_tags(level_names: dict[str, list[str]], val: dict[str, tuple[np.ndarray, np.ndarray]],
                   trained_on: dict | None) -> dict[str, dict[str, str]]:
    """{level: {tag: why}} for the tags the model cannot decide: no positive or no negative observed
    validation label (no threshold can be tuned), or no positive or no negative training label.
    ``val``: level -> (targets, mask) of the validation predictions."""
    out: dict[str, dict[str, str]] = {}
    for level, names in level_names.items():
        targets, mask = val[level]
        counts = label_counts(targets, mask, names)
        train = ((trained_on or {}).get("train_labels") or {}).get(level, {})
        why: dict[str, str] = {}
        for n in names:
            t = train.get(n)
            if t is not None and t["positive"] == 0 and t["negative"] == 0:
                why[n] = "never labelled in training"  # e.g. no column for it in an imported manifest
            elif t is not None and t["positive"] == 0:
                why[n] = "never labelled present in training"
            elif t is not None and t["negative"] == 0:
                why[n] = "never labelled absent in training"
            elif counts[n]["positive"] == 0:
                why[n] = "no positive validation label"
            elif counts[n]["negative"] == 0:
                why[n] = "no negative validation label"
        out[level] = why
    return out


def split_train_count(data_dir: str, work_dir: str | None) -> int | None:
    folder = Path(work_dir) if work_dir else Path(data_dir).parent / f"{Path(data_dir).name}.hmic"
    path = folder / "split" / "train.txt"
    if not path.exists():
        return None
    return sum(1 for line in path.read_text().splitlines() if line.strip())
