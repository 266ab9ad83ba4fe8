#!/usr/bin/env bash
# On a GPU machine, after the build: Nsight Compute's speed of light, memory, warp states (the stall
# reasons), scheduler statistics and source counters of one launch of the kernels that REGEX names,
# in a process that COMMAND starts (its first such launch skipped: it pays for module loading).
#   bash scripts/ncu_kernel.sh REPORT REGEX COMMAND...
# Writes REPORT.ncu-rep, REPORT.txt (every section), REPORT_sass.txt (the SASS instructions with
# the most warp stall samples, scripts/top_stalls.py) and prints the duration and stall lines.
# Run it through gpu_check.sh's EXTRA so that it finds the built extension on PYTHONPATH.
set -uo pipefail
report=$(realpath -m "$1")
regex=$2
shift 2
mkdir -p "$(dirname "$report")"
cd "$(dirname "$0")/.."
timeout 300 ncu --clock-control none -k "regex:$regex" --launch-skip 1 --launch-count 1 \
  --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section SchedulerStats \
  --section Occupancy --section LaunchStats --section SourceCounters -f -o "$report" "$@" >"$report.log" 2>&1
ncu -i "$report.ncu-rep" --print-details all >"$report.txt" 2>&1
ncu -i "$report.ncu-rep" --page source --csv --print-source sass >"$report.csv" 2>/dev/null &&
  python3 scripts/top_stalls.py "$report.csv" 40 >"${report}_sass.txt" 2>&1
grep -E "Duration|Memory Throughput|DRAM Throughput|Issued Warp|Eligible Warps|No Eligible|Warp Cycles Per|Grid Size" \
  "$report.txt" | head -20 | sed "s|^|[$(basename "$report")] |"
