#!/usr/bin/env bash
# Everything a lent GPU machine is needed for, as one script (about 7 minutes on one H100):
#   1. benchmarks/gpu_check.sh: full CNN14 training step in bf16, one epoch of full CNN14 + resatt,
#      tune, evaluate, a 3-minute song through `hmic predict --device cuda` (gpu_check.json);
#   2. benchmarks/predict.py on two of the machine's CPU cores (its CPU runs bf16 natively, this
#      project's CI machine does not): reference, fp32, bf16, onnxruntime, command, folder, and the bf16
#      agreement on the run trained in 1 (predict_cpu2.txt);
#   3. benchmarks/predict.py on the GPU (predict_cuda.txt).
# Each step's failure is reported and the next one still runs. EPOCHS=N trains the run of step 1
# longer (a better-trained model for the bf16 agreement); SKIP_CUDA_PREDICT=1 leaves out step 3.
#
#   bash benchmarks/gpu_run.sh                                   # on the GPU machine
#   DEVICE=cpu ARCH=cnn14-tiny CLIPS=60 SONG_SECONDS=30 STEPS=2 SMALL=1 bash benchmarks/gpu_run.sh   # CPU dry run
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-results/gpu_run}
mkdir -p "$OUT"
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
bash benchmarks/machine.sh > "$OUT/machine.txt"
cat "$OUT/machine.txt"
KEEP_WORK="$OUT/.work" bash benchmarks/gpu_check.sh 2>&1 | tee "$OUT/gpu_check.log" || echo "gpu_check failed"
WORK=$(cat "$OUT/.work" 2>/dev/null || true)
TRAINED=()
[ -n "$WORK" ] && [ -f "$WORK/runs/resatt/lam0.80/seed0/thresholds.json" ] && TRAINED=(--trained "$WORK/runs/resatt/lam0.80/seed0")
if [ -d /tmp/hmic-site ]; then export PYTHONPATH="$PWD:/tmp/hmic-site"; else export PYTHONPATH="$PWD"; fi
export PYTHONUNBUFFERED=1
if [ -n "${SMALL:-}" ]; then SIZE=(--seconds 30 --repeats 1 --folder-files 3 --folder-seconds 20); else SIZE=(--seconds 60 --repeats 1 --folder-files 6); fi
echo "== predict benchmark on 2 CPU cores"
PIN=(); taskset -c 0,1 true 2> /dev/null && PIN=(taskset -c 0,1)  # not every sandbox lets a process pin itself
OMP_NUM_THREADS=2 "${PIN[@]}" $PY benchmarks/predict.py "${SIZE[@]}" "${TRAINED[@]}" 2>&1 | tee "$OUT/predict_cpu2.txt" \
    || echo "predict benchmark (CPU) failed"
if [ "$DEVICE" = cuda ] && [ -z "${SKIP_CUDA_PREDICT:-}" ]; then
    echo "== predict benchmark on the GPU"
    $PY benchmarks/predict.py --device cuda --seconds 180 --repeats 2 --folder-files 20 --workers 4 "${TRAINED[@]}" 2>&1 \
        | tee "$OUT/predict_cuda.txt" || echo "predict benchmark (GPU) failed"
fi
[ -n "$WORK" ] && rm -rf "$WORK" "$OUT/.work"
ls -la "$OUT"
