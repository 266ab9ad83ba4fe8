#!/usr/bin/env bash
# Style checks CI runs: ruff (pyproject.toml's configuration) over the Python code, clang-format
# (.clang-format) over the C++ and CUDA code. Needs scripts/setup.sh's .venv. FIX=1 applies the fixes.
set -euo pipefail
cd "$(dirname "$0")/.."
cxx=$(git ls-files 'csrc/*.h' 'csrc/*.cpp' 'csrc/*.cu' 'csrc/*.cuh' 'bench/*.h' 'bench/*.cpp' 'bench/*.cu')
if [ -n "${FIX:-}" ]; then
  .venv/bin/ruff check --fix python tests bench scripts
  .venv/bin/clang-format -i $cxx
else
  .venv/bin/ruff check python tests bench scripts
  .venv/bin/clang-format --dry-run --Werror $cxx
fi
