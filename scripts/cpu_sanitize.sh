#!/usr/bin/env bash
# AddressSanitizer and UndefinedBehaviorSanitizer over the CPU implementations and the op bindings:
# builds a CPU-only extension with both from the committed and working-tree files into OUT_DIR/src,
# then runs the test suite and the example against it (DEMO=1 adds the demo, about 2 minutes on 2
# cores). Any report stops the run with a non-zero status; logs go to OUT_DIR (default
# build/cpu_sanitize). Needs scripts/setup.sh's .venv and gcc's libasan and libubsan. The CUDA
# kernels have compute-sanitizer instead (scripts/gpu_check.sh).
#   bash scripts/cpu_sanitize.sh [OUT_DIR]
set -euo pipefail
out=$(realpath -m "${1:-build/cpu_sanitize}")
cd "$(dirname "$0")/.."
python=$PWD/.venv/bin/python
rm -rf "$out/src" && mkdir -p "$out/src"
git ls-files -z --cached --others --exclude-standard | tar --null -T - --ignore-failed-read -cf - | tar -xf - -C "$out/src"
echo "== build (CPU only, -fsanitize=address,undefined): $out/build.log"
(cd "$out/src" && CC=/usr/bin/gcc CXX=/usr/bin/g++ LCATTN_CUDA=0 \
  CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -g1" LDFLAGS="-fsanitize=address,undefined" \
  "$python" setup.py build_ext --inplace) >"$out/build.log" 2>&1 || { tail -n 20 "$out/build.log"; exit 1; }
# Only the extension is instrumented, so the runtimes are preloaded into the uninstrumented Python.
# Reports go to files (report.PID): pytest captures stderr, and a halted test process loses it.
export LD_PRELOAD="$(/usr/bin/gcc -print-file-name=libasan.so) $(/usr/bin/gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:log_path=$out/report
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:log_path=$out/report
rm -f "$out"/report.*
export PYTHONPATH=$out/src/python PYTHONUNBUFFERED=1
cd "$out/src"
run() {  # run NAME COMMAND...: logs to $out/NAME.log
  echo "== $1: $out/$1.log"
  local name=$1
  shift
  if ! "$@" >"$out/$name.log" 2>&1 || compgen -G "$out/report.*" >/dev/null; then
    tail -n 5 "$out/$name.log"
    cat "$out"/report.* 2>/dev/null | head -n 60
    exit 1
  fi
  tail -n 1 "$out/$name.log"
}
run tests "$python" -m pytest -v -p no:cacheprovider tests  # -v: the log names a halted test
run example "$python" -m lcattn.example
if [ -n "${DEMO:-}" ]; then run demo "$python" -m lcattn.demo; fi
echo "no sanitizer reports"
