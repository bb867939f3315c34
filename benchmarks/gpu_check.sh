#!/usr/bin/env bash
# The GPU check of the paper-scale path, as one script (about 3-5 minutes on one H100; budget 8):
#   1. the training-step benchmark of full CNN14 in bf16 (clips/s, fraction of the bf16 FLOP bound);
#   2. a stand-in dataset rendered, split and featurized here;
#   3. one epoch of full CNN14 + resatt on it (bf16 backbone, float32 head), then tune and evaluate;
#   4. a 3-minute song through `hmic predict` on the GPU;
#   5. Table 1's cost through the real train_run (benchmarks/table1_cost.py), eager and --compile;
#   6. 1-4 hmic train processes packed on the GPU, with MPS where it exists (benchmarks/pack_gpu.py);
# and writes one JSON report, $OUT/gpu_check.json, with the card's name (SKIP_COST=1 / SKIP_PACK=1 leave
# out 5 / 6; COST_STEPS and PACK_STEPS size them), also copied to benchmarks/results/.
#
#   bash benchmarks/gpu_check.sh                       # on a machine with CUDA and hmic's dependencies
#   DEVICE=cpu ARCH=cnn14-tiny CLIPS=60 SONG_SECONDS=30 STEPS=2 bash benchmarks/gpu_check.sh   # a CPU dry run
#
# EPOCHS, BATCH, LR, EMBEDDING_DROPOUT set the training of step 3 (a longer run gives a trained model:
# benchmarks/gpu_bf16.sh); SKIP_TRAIN_STEP=1 leaves out step 1.
#
# A machine without hmic's pure-Python dependencies (soundfile, scikit-multilearn, tinysoundfont,
# pretty_midi, mido, cffi, pycparser) gets them from wheels in .whl/ (benchmarks/gpu_wheels.sh makes them).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu_check}
DEVICE=${DEVICE:-cuda}
ARCH=${ARCH:-cnn14}
CLIPS=${CLIPS:-400}
SONG_SECONDS=${SONG_SECONDS:-180}
STEPS=${STEPS:-30}
EPOCHS=${EPOCHS:-1}
BATCH=${BATCH:-16}
LR=${LR:-1e-3}
EMBEDDING_DROPOUT=${EMBEDDING_DROPOUT:-0.5}
WORKERS=${WORKERS:-$(nproc)}
PY=${PY:-python3}
if ! $PY -c "import soundfile, skmultilearn, tinysoundfont, pretty_midi" 2> /dev/null && ls .whl/*.whl > /dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/hmic-site .whl/*.whl
    export PYTHONPATH="$PWD:/tmp/hmic-site${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
HMIC="$PY -m hmic"
WORK=$(mktemp -d /tmp/hmic-gpu-check.XXXXXX)
mkdir -p "$OUT"
step() {  # step NAME COMMAND...: run it, keep its wall time
    local name=$1; shift
    local t0=$EPOCHREALTIME
    echo "== $name: $*"
    "$@"
    echo "$name $t0 $EPOCHREALTIME" >> "$WORK/timings.txt"
}

if [ -z "${SKIP_TRAIN_STEP:-}" ]; then
    step train_step $PY benchmarks/train_step.py --arch "$ARCH" --device "$DEVICE" --precision bf16 --steps "$STEPS" \
        --json "$OUT/train_step.json"
fi
step synth $HMIC synth --out "$WORK/data" --clips "$CLIPS" --seed 0 --workers "$WORKERS"
step split $HMIC split --data-dir "$WORK/data"
step featurize $HMIC featurize --data-dir "$WORK/data" --workers "$WORKERS"
step train_epoch $HMIC train --method resatt --arch "$ARCH" --pretrained none --epochs "$EPOCHS" --batch-size "$BATCH" \
    --lr "$LR" --warmup-epochs 0.5 --embedding-dropout "$EMBEDDING_DROPOUT" --data-dir "$WORK/data" --runs-dir "$WORK/runs" \
    --device "$DEVICE"
step tune $HMIC tune-thresholds "$WORK/runs"
step evaluate $HMIC evaluate "$WORK/runs" --json "$OUT/evaluate.json"
step song $HMIC synth-song "$WORK/song.wav" --seconds "$SONG_SECONDS" --seed 7
step predict $HMIC predict "$WORK/song.wav" --run "$WORK/runs/resatt/lam0.80/seed0" --device "$DEVICE" \
    --segments --json "$OUT/predict.json"

if [ -z "${SKIP_COST:-}" ]; then
    step table1_cost $PY benchmarks/table1_cost.py --device "$DEVICE" --arch "$ARCH" --steps "${COST_STEPS:-200}" \
        --batch "$BATCH" --json "$OUT/table1_cost.json"
    step table1_cost_compile $PY benchmarks/table1_cost.py --device "$DEVICE" --arch "$ARCH" --steps "${COST_STEPS:-200}" \
        --batch "$BATCH" --compile --json "$OUT/table1_cost_compile.json" || echo "--compile failed (reported as missing)"
fi
if [ -z "${SKIP_PACK:-}" ]; then
    step pack $PY benchmarks/pack_gpu.py --device "$DEVICE" --arch "$ARCH" --steps "${PACK_STEPS:-60}" --batch "$BATCH" \
        --json "$OUT/pack_gpu.json"
fi

$PY - "$OUT" "$WORK" "$DEVICE" "$ARCH" "$CLIPS" "$SONG_SECONDS" <<'PYEOF'
import json, sys
from pathlib import Path
import torch
out, work, device, arch, clips, song = sys.argv[1:]
out, work = Path(out), Path(work)
timings = {name: round(float(t1) - float(t0), 2) for name, t0, t1 in
           (line.split() for line in (work / "timings.txt").read_text().splitlines())}
card = torch.cuda.get_device_name() if device.startswith("cuda") and torch.cuda.is_available() else "cpu"
metrics = [json.loads(l) for l in (work / "runs/resatt/lam0.80/seed0/metrics.jsonl").read_text().splitlines()]
done = json.loads((work / "runs/resatt/lam0.80/seed0/done.json").read_text())
evaluation = json.loads((out / "evaluate.json").read_text())
predicted = json.loads((out / "predict.json").read_text())["results"][0]
n_train = len((work / "data.hmic/split/train.txt").read_text().split())
report = {
    "card": card, "torch": torch.__version__, "device": device, "arch": arch,
    "train_step_benchmark": json.loads((out / "train_step.json").read_text()) if (out / "train_step.json").exists() else None,
    "stand_in": {"clips": int(clips), "train_clips": n_train},
    "train_epoch": {"epoch_seconds": metrics[0]["seconds"], "train_clips_per_second_incl_validation": n_train / metrics[0]["seconds"],
                    "command_seconds": timings["train_epoch"], "best_val_fine_loss": done["best_val_fine_loss"],
                    "device": done["device"]},
    "evaluate_test_macro": {lv: {m: v["mean"] for m, v in d.items()} for lv, d in evaluation["macro"].items()},
    "predict": {"song_seconds": float(song), "windows": len(predicted["segments"]),
                "command_seconds": timings["predict"], "real_time_factor": float(song) / timings["predict"]},
    "wall_seconds": timings,
    **{name: json.loads((out / f"{name}.json").read_text()) for name in ("table1_cost", "table1_cost_compile", "pack_gpu")
       if (out / f"{name}.json").exists()},
}
(out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
import datetime
kept = Path("benchmarks/results") / f"{datetime.date.today()}-{card.replace(' ', '-')}-gpu-check.json"
kept.write_text(json.dumps(report, indent=2) + "\n")  # the raw record the README cites, committed
print(json.dumps(report, indent=2))
PYEOF
if [ -n "${KEEP_WORK:-}" ]; then  # the caller uses the trained run, then removes $WORK itself
    echo "$WORK" > "$KEEP_WORK"
else
    rm -rf "$WORK"
fi
