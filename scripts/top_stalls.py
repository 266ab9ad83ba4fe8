"""The SASS instructions with the most warp stall samples in an Nsight Compute source page:

    ncu -i REPORT.ncu-rep --page source --csv --print-source sass > REPORT.csv
    python scripts/top_stalls.py REPORT.csv [N]

prints the N (default 40) instructions with the most samples, their share of all samples and, for
each, the stall reasons that took the most of them; then the samples summed by opcode.
"""
import csv
import sys
from collections import Counter


def number(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def main() -> None:
    path, top = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 40
    with open(path, newline="") as f:
        lines = [line for line in f if line.startswith('"')]  # the CSV rows, without ncu's banner
    # Newer ncu writes a "Kernel Name" row before the header: start at the header.
    lines = lines[next((i for i, line in enumerate(lines) if "Warp Stall Sampling" in line), 0):]
    rows = list(csv.DictReader(lines))
    if not rows:
        sys.exit(f"no rows in {path}")
    columns = list(rows[0])
    total_col = next((c for c in columns if c.startswith("Warp Stall Sampling (All")), None)
    if total_col is None:
        sys.exit(f"no warp stall sampling column; the columns: {columns}")
    source_col = next((c for c in columns if c in ("Source", "# Source")), columns[1])
    address_col = next((c for c in columns if "Address" in c), columns[0])
    reasons = [c for c in columns if "stall" in c.lower() and not c.startswith("Warp Stall Sampling")]
    total = sum(number(r[total_col]) for r in rows) or 1.0
    print(f"{len(rows)} instructions, {total:.0f} samples")
    for r in sorted(rows, key=lambda r: -number(r[total_col]))[:top]:
        why = sorted(((number(r[c]), c) for c in reasons), reverse=True)[:3]
        named = ", ".join(f"{c.split('stalled_')[-1]} {v:.0f}" for v, c in why if v > 0)
        share = 100 * number(r[total_col]) / total
        print(f"{share:5.1f}%  {r[address_col]:>8}  {r[source_col].strip()[:70]:70}  {named}")
    by_op = Counter()
    for r in rows:
        op = r[source_col].strip().lstrip("@!P0123456789UPT ").split(" ")[0]
        by_op[op] += number(r[total_col])
    print("\nby opcode:")
    for op, n in by_op.most_common(15):
        print(f"{100 * n / total:5.1f}%  {op}")


if __name__ == "__main__":
    main()
