#!/usr/bin/env bash
# On a GPU machine, after the build: Nsight Compute's speed of light, warp states (the stall reasons)
# and scheduler statistics of one Hopper attention call per schedule, at the V4-Flash prefill case
# (S = 4096, 640 keys a query) and at decode (B = 64), each in OUT_DIR/ncu_<schedule>_<case>.txt.
#   bash scripts/ncu_attention.sh OUT_DIR [SCHEDULE...]   (keys: version 7, dims: version 4, by
#                                   LCATTN_ATTN_SCHEDULE; pair: LCATTN_ATTN_PAIR=1; default: keys dims)
# Each case's report is kept (ncu_<schedule>_<case>.ncu-rep, scripts/ncu_kernel.sh), with the SASS
# instructions with the most warp stall samples in ncu_<schedule>_<case>_sass.txt.
# Run it through gpu_check.sh's EXTRA so that it finds the built extension on PYTHONPATH.
set -uo pipefail
out=$(realpath -m "${1:-ncu_attention}")
mkdir -p "$out"
cd "$(dirname "$0")/.."
schedules=("${@:2}")
[ ${#schedules[@]} -gt 0 ] || schedules=(keys dims)
for schedule in "${schedules[@]}"; do
  case $schedule in
    keys | dims) env=(LCATTN_ATTN_SCHEDULE=$schedule) ;;
    pair) env=(LCATTN_ATTN_PAIR=1) ;;
    *) echo "unknown schedule $schedule" >&2; exit 2 ;;
  esac
  for case in prefill decode; do
    args=(--tokens 4096)
    [ "$case" = decode ] && args=(--batch 64 --tokens 1)
    bash scripts/ncu_kernel.sh "$out/ncu_${schedule}_${case}" attention_sm90 env "${env[@]}" \
      python3 bench/python/attention_once.py "${args[@]}"
  done
done
