"""Runs the driver's cases of one family eagerly (no CUDA graph) under torch.profiler and prints the
GPU time per kernel, to see where a case's time goes.

    python bench/python/profile_case.py FAMILY [CASE_SUBSTRING] [--iters N] [--baselines]
"""
import argparse

import cases  # bench/python/cases/ and run.py, beside this script
import run
import torch
from torch.profiler import ProfilerActivity, profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("family", choices=sorted(run.FAMILIES))
    parser.add_argument("case", nargs="?", default="", help="only cases whose name holds this")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--baselines", action="store_true", help="profile the baselines too")
    parser.add_argument("--rows", type=int, default=12, help="kernels listed per case")
    args = parser.parse_args()
    cases.GRAPHS = False  # decode cases run eagerly, so that the profiler sees each launch
    for op, case, _, _, ours, baselines, *_ in run.FAMILIES[args.family](False):
        if args.case not in case:
            continue
        makers = {"lcattn": ours, **(baselines if args.baselines else {})}
        for who, make in makers.items():
            fn = make()
            for _ in range(3):
                fn()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(args.iters):
                    fn()
                torch.cuda.synchronize()
            events = [e for e in prof.key_averages() if e.device_time_total > 0]
            events.sort(key=lambda e: -e.device_time_total)
            total = sum(e.device_time_total for e in events) / args.iters
            print(f"\n{op} {case} [{who}]: {total / 1e3:.3f} ms of kernels per call")
            for e in events[: args.rows]:
                per = e.device_time_total / args.iters
                print(f"  {per / 1e3:8.3f} ms {100 * per / total:5.1f}% x{e.count // args.iters:<3} {e.key[:110]}")


if __name__ == "__main__":
    main()
