"""Runs the driver's cases of one family eagerly a few times and nothing else, for profilers that
attach to the process (ncu, compute-sanitizer):

    bash scripts/ncu_kernel.sh OUT/topk64 topk_stream python bench/python/case_once.py topk_indices "rows=64 "
"""
import argparse

import cases  # bench/python/cases/ and run.py, beside this script
import run
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("family", choices=sorted(run.FAMILIES))
    parser.add_argument("case", nargs="?", default="", help="only cases whose name holds this")
    parser.add_argument("--calls", type=int, default=3)
    args = parser.parse_args()
    cases.GRAPHS = False  # decode cases run eagerly, so that each launch is the kernel's own
    for op, case, _flops, _bytes, make, *_ in run.FAMILIES[args.family](False):
        if args.case not in case:
            continue
        call = make()
        for _ in range(args.calls):
            call()
        torch.cuda.synchronize()
        print(f"{op} {case}: {args.calls} calls")


if __name__ == "__main__":
    main()
