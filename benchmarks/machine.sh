#!/usr/bin/env bash
# What a benchmark ran on: CPU count, CPU model, native bf16 flags, GPUs. Used by the GPU scripts.
nproc
grep -m1 "model name" /proc/cpuinfo
grep -o -w -E "avx512_bf16|amx_bf16" /proc/cpuinfo | sort -u
nvidia-smi -L 2> /dev/null || true
