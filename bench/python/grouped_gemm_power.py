"""The prefill grouped GEMM at a fixed FLOP count (N = K = 4096, 65,536 rows in all) spread over E =
256, 64, 16 and 1 experts, against F.grouped_mm and torch.bmm, with the SM clock and board power that
nvidia-smi reports while each runs for a while: at 256 rows per expert every weight byte comes from
HBM once per 256 rows, at E = 1 the weights stay in L2, and a GEMM held at the board's power limit
runs at the clock that power leaves it (clock event reason 0x4, the software power cap).

    python bench/python/grouped_gemm_power.py [--experts 256,64,16,1] [--seconds 1.5]
"""
import argparse
import subprocess
import threading
import time

import torch
from cases import BF  # bench/python/cases/, beside this script
from cases.moe import uniform_gemms

from lcattn.testing.bench import median_ms

ROWS, N, K = 65536, 4096, 4096


class Sampler:
    """nvidia-smi's SM clock (MHz), power (W) and clock event reasons, sampled in a thread."""

    def __init__(self):
        self.samples, self.stop = [], threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        query = ["nvidia-smi", f"--id={torch.cuda.current_device()}", "--format=csv,noheader,nounits",
                 "--query-gpu=clocks.sm,power.draw,clocks_event_reasons.active"]
        while not self.stop.is_set():
            out = subprocess.run(query, capture_output=True, text=True).stdout.strip().split(", ")
            try:
                self.samples.append((time.time(), int(out[0]), float(out[1]), out[2]))
            except (ValueError, IndexError):  # "[N/A]" or no GPU listed
                pass
            time.sleep(0.05)

    def median(self, t0, t1):
        """Median clock and power between t0 and t1, and the reasons seen."""
        sel = [s for s in self.samples if t0 <= s[0] <= t1]
        if not sel:
            return "no samples"
        mhz, watts = sorted(s[1] for s in sel), sorted(s[2] for s in sel)
        reasons = ",".join(sorted({s[3] for s in sel}))
        return f"{mhz[len(mhz) // 2]} MHz, {watts[len(watts) // 2]:.0f} W, reasons {reasons}"


def sustained(fn, seconds, sampler):
    """Runs fn for `seconds` and returns the clock and power of its last two thirds."""
    torch.cuda.synchronize()
    t0 = time.time()
    while time.time() - t0 < seconds:
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
    t1 = time.time()
    return sampler.median(t0 + (t1 - t0) / 3, t1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", default="256,64,16,1")
    parser.add_argument("--seconds", type=float, default=1.5, help="sustained run per GEMM for the clocks")
    args = parser.parse_args()
    sampler = Sampler()
    flops = 2 * ROWS * N * K
    a, b = torch.randn(8192, 8192, device="cuda", dtype=BF), torch.randn(8192, 8192, device="cuda", dtype=BF)
    matmul = lambda: a @ b  # noqa: E731  the driver's ceiling
    print(f"{torch.cuda.get_device_name()}: matmul 8192^3 {2 * 8192**3 / median_ms([matmul], 20) / 1e9:.0f} "
          f"TFLOP/s; {sustained(matmul, args.seconds, sampler)}", flush=True)
    for E in (int(e) for e in args.experts.split(",")):
        for who, make in uniform_gemms(E, ROWS // E, N, K).items():
            call = make()
            rate = flops / median_ms([call], 20) / 1e9
            print(f"E={E} rows/expert={ROWS // E} {who}: {rate:.0f} TFLOP/s; "
                  f"{sustained(call, args.seconds, sampler)}", flush=True)
    sampler.stop.set()


if __name__ == "__main__":
    main()
