#!/usr/bin/env bash
# On a GPU machine: build lcattn with every core, record the kernels' registers and spills, run the
# CUDA tests, the whole suite, the example and the C++ microbenchmarks, then compute-sanitizer
# memcheck and racecheck over each op family's CUDA tests. Logs go under the folder given as the
# first argument (default: gpu_results); the exit status is non-zero if any step failed.
#   bash scripts/gpu_check.sh OUT_DIR [FAMILY...]   (sanitizer families; default: all; "none": skip)
# The C++ benches run at shapes whose single-threaded CPU check takes seconds, not minutes.
# QUICK=1 runs only the CUDA tests of the sanitizer families (no suite, example or C++ benches; none
# with "none").
# BENCH="ARGS" also runs python bench/python/run.py ARGS --out OUT_DIR/bench (with a FlashMLA column
# when build/baselines/flashmla_baseline.so, from scripts/build_flashmla.sh, is carried along).
# DEMO_CONTEXT=N also runs the demo with an N-token prompt (DEMO_ARGS="--eager --no-compile" adds its
# flags); STEP_TIMEOUT=S bounds each step (1800 s); SANITIZE=0 skips compute-sanitizer; SANITIZE_K=EXPR
# runs it only on the CUDA tests that pytest's -k EXPR selects; EXTRA="CMD"
# runs CMD as one more step (after the benchmarks) with the same environment. SKIP_BUILD=1 uses the
# carried python/lcattn/_C*.so as it is (built elsewhere with the same torch and CUDA).
set -uo pipefail
out=$(realpath -m "${1:-gpu_results}")
mkdir -p "$out"
cd "$(dirname "$0")/.."
# The system compiler: a wrapper that links libstdc++ statically breaks iostreams beside torch.
export CXX=/usr/bin/g++ CC=/usr/bin/gcc
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} PATH=${CUDA_HOME:-/usr/local/cuda}/bin:$PATH
export MAX_JOBS=$(nproc) LCATTN_CUDA=1 PYTHONPATH=$PWD/python${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
status=0
step() {  # step NAME COMMAND...: runs it, logs to $out/NAME.log, records failure
  echo "== $1"
  local name=$1
  shift
  if ! timeout "${STEP_TIMEOUT:-1800}" "$@" >"$out/$name.log" 2>&1; then
    echo "   FAILED (see $name.log)"
    status=1
  fi
  tail -n 3 "$out/$name.log"
}

# CUTLASS headers from a carried nvidia-cutlass wheel, when there is one (no network there).
if ls .whl/nvidia_cutlass-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --upgrade --no-index --no-deps --target /tmp/cutlass_site .whl/nvidia_cutlass-*.whl
  export PYTHONPATH=$PYTHONPATH:/tmp/cutlass_site
fi

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem --format=csv >"$out/gpu.txt" 2>&1
[ -n "${SKIP_BUILD:-}" ] || step build python3 setup.py build_ext --inplace
step resources bash -c 'cuobjdump -res-usage python/lcattn/_C*.so | grep -A1 -E "attention|indexer|moe|cutlass" | grep -E "Function|REG"'
families=("${@:2}")
[ ${#families[@]} -gt 0 ] || families=(compress indexer attention moe mhc opcheck)
[ "${families[0]}" != none ] || families=()
if [ -n "${QUICK:-}" ]; then
  files=()
  for family in "${families[@]}"; do files+=("tests/test_$family.py"); done
  # -v names each test as it starts, so a hanging kernel shows in the log (with STEP_TIMEOUT).
  # With "none" there is no family to test (pytest without files would run the whole suite).
  [ ${#files[@]} -eq 0 ] || step tests_cuda python3 -m pytest "${files[@]}" -m cuda -v -rs --durations=5
else
  step tests_cuda python3 -m pytest tests -m cuda -q -rs --durations=10
  step tests_all python3 -m pytest tests -q
  step example python3 -m lcattn.example
  step cpp_bench bash -c 'cmake -S . -B build/cmake -DPython3_EXECUTABLE="$(command -v python3)" >/dev/null && cmake --build build/cmake -j "$(nproc)" >/dev/null &&
    build/cmake/bench_attention && build/cmake/bench_indexer --tokens=128 && build/cmake/bench_moe --experts=16 &&
    build/cmake/bench_compress --tokens=16384'
fi
if [ -n "${BENCH:-}" ]; then step bench python3 bench/python/run.py $BENCH --out "$out/bench"; fi
if [ -n "${EXTRA:-}" ]; then step extra bash -c "$EXTRA"; fi
if [ -n "${DEMO_CONTEXT:-}" ]; then step demo python3 -m lcattn.demo --context "$DEMO_CONTEXT" ${DEMO_ARGS:-}; fi
# Without the caching allocator every tensor is its own allocation, so memcheck sees overruns.
# racecheck runs minutes per large case: it skips the prefill-scale and 1M-context cases, top-k rows
# of 262K-4M entries, the 200-, 70- and 300-token Hopper attention prefills (the 33-token and decode
# cases run), and the grouped GEMMs at V4 dims (4096, 7168), in CUDA graphs and on forced grids
# (the small irregular ones run), and the fused indexer top-k's cases whose math warpgroups cut their
# buffers a different number of times (20000 entries, the tied corner cases; the graph-replay case
# cuts too): racecheck flags those even where every access is ordered by bar.sync
# (scripts/racecheck_named_barriers.cu reproduces it). In the attention family it reports version 6's
# row maxima hand-off (a bar.arrive -> bar.sync pair; scripts/racecheck_pair_exchange.cu shows the tool
# flags that ordered pattern), and the decode in clusters of two's exchange through distributed shared
# memory (scripts/racecheck_cluster_exchange.cu: racecheck reports an ordered exchange as a race): any
# other hazard there is news.
[ "${SANITIZE:-1}" != 0 ] || families=()
chosen=${SANITIZE_K:+($SANITIZE_K) and }
for family in "${families[@]}"; do
  step "memcheck_$family" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck \
    --error-exitcode 1 python3 -m pytest "tests/test_$family.py" -m cuda -q -x ${SANITIZE_K:+-k "$SANITIZE_K"}
  step "racecheck_$family" compute-sanitizer --tool racecheck --error-exitcode 1 \
    python3 -m pytest "tests/test_$family.py" -m cuda -q -x -v \
    -k "${chosen}not scale and not 262144 and not 393216 and not 393217 and not 1048576 and not 4194304 and not 1-200-64 and not 1-70-128 and not 2-300-64 and not 4096 and not 4100 and not 7168 and not (moe and replays) and not grid_size and not (fused and (20000 or corner or replay))"
done
echo "== status $status"
exit $status
