#!/usr/bin/env bash
# Builds the FlashMLA baselines of the benchmarks into OUT/flashmla_baseline.so, loadable with
# torch.ops.load_library on any machine with the same torch; no GPU needed to build:
#   sparse_prefill  bench/baselines/flashmla_sparse_op.cu around FlashMLA's sm_90a sparse prefill,
#   sparse_decode   bench/baselines/flashmla_sparse_decode_op.cu around its sm_90a fp8 sparse decode
#                   (V4's MODEL1 cache, 64 heads) with its split scheduler and combine kernels.
#   bash scripts/build_flashmla.sh FLASHMLA_SOURCE_DIR [OUT]   (OUT default: build/baselines)
# CUTLASS headers: the nvidia-cutlass wheel installed in the environment, or CUTLASS_DIR.
# bench/python/run.py loads OUT/flashmla_baseline.so (or $LCATTN_FLASHMLA_LIB) when flash_mla itself
# does not import.
set -euo pipefail
src=$(realpath "$1")
cd "$(dirname "$0")/.."
out=$(realpath -m "${2:-build/baselines}")
mkdir -p "$out"
python=${PYTHON:-python3}
cutlass=${CUTLASS_DIR:-$($python -c 'import cutlass_library, os; print(os.path.join(os.path.dirname(cutlass_library.__file__), "source"))')}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} PATH=${CUDA_HOME:-/usr/local/cuda}/bin:$PATH
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a} MAX_JOBS=${MAX_JOBS:-$(nproc)}
$python - "$src" "$cutlass" "$out" <<'PY'
import sys
from torch.utils.cpp_extension import load
src, cutlass, out = sys.argv[1:]
load(name="flashmla_baseline", is_python_module=False, verbose=False, build_directory=out,
     sources=["bench/baselines/flashmla_sparse_op.cu", f"{src}/csrc/sm90/prefill/sparse/instantiations/phase1_k512.cu",
              "bench/baselines/flashmla_sparse_decode_op.cu",
              f"{src}/csrc/sm90/decode/sparse_fp8/instantiations/model1_persistent_h64.cu",
              f"{src}/csrc/smxx/decode/get_decoding_sched_meta/get_decoding_sched_meta.cu",
              f"{src}/csrc/smxx/decode/combine/combine.cu"],
     extra_include_paths=[f"{src}/csrc", f"{src}/csrc/sm90", f"{src}/csrc/kerutils/include",
                          f"{cutlass}/include", f"{cutlass}/tools/util/include"],
     extra_cflags=["-O3", "-std=c++20"],
     extra_cuda_cflags=["-O3", "-std=c++20", "-DNDEBUG", "-DFLASH_MLA_DISABLE_FP16", "--expt-relaxed-constexpr",
                        "--expt-extended-lambda", "--use_fast_math", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__", "-U__CUDA_NO_HALF_OPERATORS__",
                        "-U__CUDA_NO_HALF_CONVERSIONS__", "-U__CUDA_NO_HALF2_OPERATORS__"])
print(f"built {out}/flashmla_baseline.so")
PY
