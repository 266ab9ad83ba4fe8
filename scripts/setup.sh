#!/usr/bin/env bash
# Fresh-machine setup: a virtual environment in .venv with torch 2.11.0 (the CUDA 13.0 build on
# PyPI), the CUTLASS headers wheel and the test tools (transformers and accelerate, which its FP8
# loading needs, for the compatibility tests; ruff and clang-format for scripts/lint.sh), then
# lcattn built and installed into it.
# The CUDA kernels are built when nvcc is found (CUDA_HOME, default /usr/local/cuda), even with no
# GPU; otherwise a CPU-only build, said loudly (LCATTN_CUDA=1 turns that into an error).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip "setuptools<82" wheel
.venv/bin/python -m pip install -q torch==2.11.0 numpy pytest ninja transformers==5.23.0 accelerate==1.16.0 ruff==0.17.6 clang-format==23.1.5
.venv/bin/python -m pip install -q --no-deps nvidia-cutlass==4.2.0.0
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
if [ -x "$CUDA_HOME/bin/nvcc" ]; then export PATH=$CUDA_HOME/bin:$PATH; fi
MAX_JOBS=${MAX_JOBS:-$(nproc)} .venv/bin/python -m pip install -q --no-build-isolation --no-deps .
