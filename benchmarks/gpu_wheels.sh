#!/usr/bin/env bash
# Wheels for benchmarks/gpu_check.sh on a GPU machine whose Python (3.12) has torch but not hmic's
# pure-Python dependencies. Run here (with network to the package index); the wheels land in .whl/.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
for spec in soundfile==0.14.0 scikit-multilearn==0.2.0 tinysoundfont==0.3.7 pretty_midi==0.2.11.post0 mido==1.3.3 \
            cffi==2.1.1 pycparser==3.12; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d .whl "$spec" \
    || python3 -m pip download -q --no-deps --no-binary=:none: -d .whl "$spec"
done
ls -la .whl
