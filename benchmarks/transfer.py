"""Leave-one-font-out transfer of the stand-in: train on clips rendered with one SoundFont, evaluate on
clips rendered with another font from different arrangements, before and after the stand-in's variety
and the training augmentations.

    python benchmarks/transfer.py --train-font TimGM6mb --test-font /usr/share/sounds/sf3/MuseScore_General_Lite.sf3

Conditions (each one training run per method, the demo's song-model recipe: cnn14-light, 10 epochs):
  before    the plain stand-in (`hmic synth`), no augmentation;
  variety   the stand-in rendered with `--variety`, no augmentation;
  gainshift the variety stand-in, trained with random gain (±6 dB) and time shift (±2 s);
  after     the variety stand-in, trained with gain, shift and mixup (α = 1).
Held out: a plain stand-in rendered with the other font (another seed: other arrangements), every clip
with its observed labels. Reports macro ROC-AUC (fine, coarse) on the held-out font and on the
training font's own test split, per condition and method, and writes --out/transfer.json.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from hmic import FrontendConfig  # noqa: E402
from hmic.models.loading import Checkpoint  # noqa: E402
from hmic.data.openmic import OpenMIC  # noqa: E402
from hmic.devices import resolve_device  # noqa: E402
from hmic.data.features import featurize  # noqa: E402
from hmic.evaluation.metrics import score_level  # noqa: E402
from hmic import Run  # noqa: E402
from hmic.data.split import make_split, save_split, split_dir, split_meta  # noqa: E402
from hmic.data.synth.dataset import SynthOptions, synthesize  # noqa: E402
from hmic.data.synth.render import default_soundfont  # noqa: E402
from hmic import TrainConfig  # noqa: E402
from hmic import train_run
from hmic.training.loop import predict_part  # noqa: E402
from hmic.training.data import load_training_data  # noqa: E402


def prepare(root: Path, opts: SynthOptions, workers: int) -> Path:
    synthesize(root, opts, workers=workers, progress=True)
    work = Path(str(root) + ".hmic")
    dataset = OpenMIC.load(root)
    if not (split_dir(work) / "train.txt").exists():
        save_split(make_split(dataset, 0.15, 0), split_dir(work), split_meta(dataset, 0.15, 0, 2))
    keys = sorted(dataset.train_keys + dataset.test_keys)
    featurize(keys, [dataset.audio_path(k) for k in keys], work, FrontendConfig(), workers=workers, progress=True)
    return work


def macro(scores) -> float:
    return scores.macro["roc_auc"]


def held_out_scores(run: Run, cfg: TrainConfig) -> dict:
    """The run's model on every clip of another stand-in (its own labels), macro ROC-AUC per level."""
    model = Checkpoint.load(run.best_path).model
    data = load_training_data(cfg)
    device = resolve_device("cpu")
    preds = [predict_part(model, data.parts[p], data.store, device) for p in ("train", "val", "test")]
    out = {}
    for level in ("fine", "coarse"):
        probs = np.concatenate([p[f"{level}_probs"] for p in preds])
        targets = np.concatenate([p[f"{level}_targets"] for p in preds])
        mask = np.concatenate([p[f"{level}_mask"] for p in preds])
        names = list(preds[0][f"{level}_names"])
        out[level] = macro(score_level(probs, targets, mask, np.full(len(names), 0.5), names))
    return out


def own_test_scores(run: Run) -> dict:
    pred = run.predictions("test")
    return {level: macro(score_level(pred[f"{level}_probs"], pred[f"{level}_targets"], pred[f"{level}_mask"],
                                     np.full(pred[f"{level}_probs"].shape[1], 0.5), list(pred[f"{level}_names"])))
            for level in ("fine", "coarse")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-font", default="", help="SoundFont of the training stand-in (default TimGM6mb)")
    ap.add_argument("--test-font", required=True, help="SoundFont of the held-out stand-in")
    ap.add_argument("--clips", type=int, default=900)
    ap.add_argument("--test-clips", type=int, default=400)
    ap.add_argument("--methods", default="gmp")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--conditions", default="before,variety,gainshift,after")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seeds", default="0", help="training seeds, comma-separated (the data stay the same)")
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "transfer")
    args = ap.parse_args()
    train_font = args.train_font or str(default_soundfont())
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    held = out / "heldout"
    prepare(held, SynthOptions(clips=args.test_clips, seed=1000, soundfonts=(args.test_font,)), args.workers)
    data = {"plain": SynthOptions(clips=args.clips, seed=0, soundfonts=(train_font,)),
            "variety": SynthOptions(clips=args.clips, seed=0, soundfonts=(train_font,), variety=True)}
    gain_shift = {"aug_gain_db": 6.0, "aug_shift_seconds": 2.0}
    conditions = {"before": ("plain", {}), "variety": ("variety", {}), "gainshift": ("variety", gain_shift),
                  "after": ("variety", {**gain_shift, "mixup_alpha": 1.0})}
    results = {}
    for name in args.conditions.split(","):
        variant, aug = conditions[name]
        opts = data[variant]
        root = out / f"train-{variant}"
        work = prepare(root, opts, args.workers)
        for method in args.methods.split(","):
            for seed in (int(x) for x in args.seeds.split(",")):
                cfg = TrainConfig(method=method, seed=seed, arch="cnn14-light", pretrained="none", epochs=args.epochs,
                                  lr=1e-3, warmup_epochs=0.5, batch_size=16, embedding_dropout=0.0, data_dir=str(root),
                                  work_dir=str(work), runs_dir=str(out / f"runs-{name}"), device="cpu", **aug)
                summary = train_run(cfg, resume=True)
                run = Run(Path(summary["run"]))
                held_cfg = replace(cfg, data_dir=str(held), work_dir=str(Path(str(held) + ".hmic")))
                key = f"{name}/{method}" + (f"/seed{seed}" if seed else "")
                results[key] = {"held_out_font": held_out_scores(run, held_cfg), "own_font_test": own_test_scores(run),
                                "augment": aug, "variety": opts.variety, "seed": seed}
                print(json.dumps({key: results[key]}), flush=True)
    previous = out / "transfer.json"
    if previous.exists():  # conditions run earlier into the same --out stay in the report
        results = {**json.loads(previous.read_text()).get("results", {}), **results}
    report = {"train_font": train_font, "test_font": args.test_font, "clips": args.clips,
              "test_clips": args.test_clips, "epochs": args.epochs, "results": results,
              "seconds": round(time.time() - t0, 1)}
    previous.write_text(json.dumps(report, indent=2) + "\n")
    print(f"train font: {Path(train_font).name}; held-out font: {Path(args.test_font).name}; macro ROC-AUC")
    print(f"{'condition/method':<22}{'held-out fine':>15}{'held-out coarse':>17}{'own fine':>10}{'own coarse':>12}")
    for key, r in results.items():
        print(f"{key:<22}{r['held_out_font']['fine']:>15.3f}{r['held_out_font']['coarse']:>17.3f}"
              f"{r['own_font_test']['fine']:>10.3f}{r['own_font_test']['coarse']:>12.3f}")


if __name__ == "__main__":
    main()
