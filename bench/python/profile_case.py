"""Runs the driver's cases of one family eagerly (no CUDA graph) under torch.profiler and prints the
GPU time per kernel, to see where a case's time goes; with --plain only runs them, for profilers
that attach to the process (ncu, compute-sanitizer).

    python bench/python/profile_case.py FAMILY [CASE_SUBSTRING] [--iters N] [--baselines] [--plain]
"""
import argparse

import cases  # bench/python/cases/ and run.py, beside this script
import run
import torch

from lcattn.testing.bench import kernel_profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("family", choices=sorted(run.FAMILIES))
    parser.add_argument("case", nargs="?", default="", help="only cases whose name holds this")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--baselines", action="store_true", help="profile the baselines too")
    parser.add_argument("--rows", type=int, default=12, help="kernels listed per case")
    parser.add_argument("--plain", action="store_true", help="run each case --iters times, no torch.profiler")
    args = parser.parse_args()
    cases.GRAPHS = False  # decode cases run eagerly, so that the profiler sees each launch
    for op, case, _, _, ours, baselines, *_ in run.FAMILIES[args.family](False):
        if args.case not in case:
            continue
        makers = {"lcattn": ours, **(baselines if args.baselines else {})}
        for who, make in makers.items():
            if args.plain:
                call = make()
                for _ in range(args.iters):
                    call()
                torch.cuda.synchronize()
                print(f"{op} {case} [{who}]: {args.iters} calls")
                continue
            total, _, lines = kernel_profile(make(), args.iters)
            print(f"\n{op} {case} [{who}]: {total / 1e3:.3f} ms of kernels per call")
            print("\n".join(lines[: args.rows]))

if __name__ == "__main__":
    main()
