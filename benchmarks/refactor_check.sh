#!/usr/bin/env bash
# Usage: benchmarks/refactor_check.sh OUT_DIR  (then: python benchmarks/refactor_compare.py BEFORE AFTER)
# Renders a 72-clip stand-in, trains all seven heads (cnn14-tiny, 2 epochs, λ 0.7 and 0.9) on CPU,
# tunes, evaluates, builds the table and tags a 33-s song; then a tiny frozen grid (embed with one of those
# runs' backbone, all heads x 2 λ x 2 seeds on the cached embeddings), keeping every artefact for comparison.
# Every command that has a precision is given --precision fp32, so 'auto' cannot change what is compared.
# Bit-identity check: the same tiny CPU pipeline before and after a refactor.
set -euo pipefail
OUT=${1:?usage: refactor_check.sh OUT_DIR}; HMIC=${HMIC:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/hmic}
rm -rf "$OUT"; mkdir -p "$OUT"
cd "$OUT"
export OMP_NUM_THREADS=2
$HMIC synth --out data/synth --clips 72 --seed 0 --workers 2 > /dev/null
$HMIC split --data-dir data/synth --val-fraction 0.2 > /dev/null
$HMIC featurize --data-dir data/synth --workers 2 > /dev/null
$HMIC train --method flat,levelwise,topdown,gap,lp,gmp,resatt --lambdas 0.7,0.9 --seed 0 --arch cnn14-tiny --pretrained none --epochs 2 --batch-size 8 --lr 1e-3 --warmup-epochs 0.5 --data-dir data/synth --runs-dir runs --device cpu --precision fp32 > train.txt 2>&1
$HMIC tune-thresholds runs > /dev/null
$HMIC evaluate runs --json eval.json > /dev/null
$HMIC table runs --out results > /dev/null
$HMIC synth-song song.wav --seconds 33 --seed 3 > /dev/null
$HMIC predict song.wav --run runs/resatt/lam0.70/seed0 --segments --explain --precision fp32 --json pred_resatt.json --csv pred_resatt.csv > /dev/null
$HMIC predict song.wav --run runs/gmp/lam0.90/seed0 --segments --explain --precision fp32 --json pred_gmp.json > /dev/null
$HMIC embed --run runs/gmp/lam0.90/seed0 --data-dir data/synth --device cpu --precision fp32 > /dev/null
$HMIC train --protocol frozen --pretrained runs/gmp/lam0.90/seed0 --arch cnn14-tiny --method flat,levelwise,topdown,gap,lp,gmp,resatt --lambdas 0.7,0.9 --seeds 2 --epochs 2 --batch-size 8 --lr 1e-3 --warmup-epochs 0.5 --data-dir data/synth --runs-dir frozen-runs --device cpu --precision fp32 > train-frozen.txt 2>&1
$HMIC tune-thresholds frozen-runs > /dev/null
$HMIC evaluate frozen-runs --json eval-frozen.json > /dev/null
find data/synth -name '*.ogg' | sort | xargs md5sum > audio.md5
md5sum data/synth/*.csv data/synth/partitions/* data/synth.hmic/split/*.txt song.wav > meta.md5
md5sum data/synth.hmic/features/*/logmel.f16 > feat.md5
