#!/usr/bin/env bash
# Issue 12's figures that need the lent GPU machine, as one script (about 7 minutes on one H100):
#   1. a full-size CNN14 + resatt trained from scratch on a rendered stand-in (benchmarks/gpu_check.sh
#      with more clips and epochs: GPU, bf16 backbone), tuned and evaluated (gpu_check.json);
#   2. bf16 against fp32 presence decisions of that trained model over rendered songs, on two cores of
#      the machine's CPU (an Intel Xeon with native bf16: AMX, avx512_bf16) and on the GPU (bf16_*.txt);
#   3. benchmarks/cpu_layouts.py and benchmarks/predict.py on two of those CPU cores, the latter with the
#      trained model (cpu_layouts.txt, predict_cpu2.txt).
# Each step's failure is reported and the next one still runs.
#
#   bash benchmarks/gpu_bf16.sh                                           # on the GPU machine
#   DEVICE=cpu ARCH=cnn14-tiny CLIPS=60 EPOCHS=1 SMALL=1 AGREE_FLAGS=--emulated bash benchmarks/gpu_bf16.sh  # CPU dry run
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-results/gpu_bf16}
mkdir -p "$OUT"
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
bash benchmarks/machine.sh > "$OUT/machine.txt"
cat "$OUT/machine.txt"
SKIP_TRAIN_STEP=1 CLIPS=${CLIPS:-1600} EPOCHS=${EPOCHS:-15} BATCH=32 LR=1e-3 EMBEDDING_DROPOUT=0 SONG_SECONDS=60 \
    KEEP_WORK="$OUT/.work" bash benchmarks/gpu_check.sh > "$OUT/gpu_check.log" 2>&1 || echo "gpu_check failed"
tail -32 "$OUT/gpu_check.log"
WORK=$(cat "$OUT/.work" 2>/dev/null || true)
RUN="$WORK/runs/resatt/lam0.80/seed0"
if [ -d /tmp/hmic-site ]; then export PYTHONPATH="$PWD:/tmp/hmic-site"; else export PYTHONPATH="$PWD"; fi
export PYTHONUNBUFFERED=1
if [ -n "$WORK" ] && [ -f "$RUN/thresholds.json" ]; then
    SONGS=()
    for seed in 1 2 3 4; do
        $PY -m hmic synth-song "$WORK/agree$seed.wav" --seconds 60 --seed "$seed" > /dev/null && SONGS+=("$WORK/agree$seed.wav")
    done
    echo "== bf16 agreement, CPU (2 threads)"
    OMP_NUM_THREADS=2 $PY benchmarks/bf16_agreement.py "$RUN" "${SONGS[@]}" ${AGREE_FLAGS:-} 2>&1 | tee "$OUT/bf16_cpu.txt"
    if [ "$DEVICE" = cuda ] && [ -z "${SKIP_CUDA_AGREEMENT:-}" ]; then
        echo "== bf16 agreement, GPU"
        $PY benchmarks/bf16_agreement.py "$RUN" "${SONGS[@]}" --device cuda 2>&1 | tee "$OUT/bf16_cuda.txt"
    fi
    TRAINED=(--trained "$RUN")
else
    echo "no trained run: the agreement rows are left out"
    TRAINED=()
fi
if [ -n "${SMALL:-}" ]; then SIZE=(--seconds 30 --repeats 1 --folder-files 2 --folder-seconds 20); else SIZE=(--seconds 60 --repeats 2 --folder-files ${FOLDER_FILES:-6}); fi
echo "== float32 layouts on 2 CPU threads"
OMP_NUM_THREADS=2 $PY benchmarks/cpu_layouts.py --repeats 2 --profile 2>&1 | grep -v -i warn | tee "$OUT/cpu_layouts.txt"
echo "== predict benchmark on 2 CPU threads"
OMP_NUM_THREADS=2 $PY benchmarks/predict.py "${SIZE[@]}" "${TRAINED[@]}" 2>&1 | tee "$OUT/predict_cpu2.txt" \
    || echo "predict benchmark failed"
[ -n "$WORK" ] && rm -rf "$WORK" "$OUT/.work"
ls -la "$OUT"
