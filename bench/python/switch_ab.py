"""A/B of dispatch switches on the driver's cases, with the settings interleaved: every case is timed
under each setting in turn (the order rotated each round), for several rounds, on the same input
sets, so a drift of clocks or of the GPU's state over the run falls on all settings alike (the
driver's --switch times the reference first, then each switch). Prints each setting's median over
the rounds, its spread (min-max) and its ratio to the first setting (above 1: faster than the
first). A case replayed as a CUDA graph ("(graph)", decode) fixes its kernels when the graph is
captured, so it is captured once under each setting, with the same input sets (the same seed).

    python bench/python/switch_ab.py --ops sparse_attn,dense_attn --match prefill \\
        --setting "" --setting "LCATTN_ATTN_STAGED_OUT=0 LCATTN_ATTN_KEY_FENCE=0" [--rounds 5]

A setting is a space-separated list of NAME=VALUE; "" is the environment as it is. The switches
must be read per call (the dispatch's are).
"""
import argparse
import os
import statistics

import torch
from phase_probe import parse_setting  # bench/python/, beside this script
from run import FAMILIES

from lcattn.testing.bench import median_ms, rotated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", default="sparse_attn,dense_attn", help=f"comma list of {', '.join(FAMILIES)}")
    parser.add_argument("--match", default="", help="only the cases whose name holds this text")
    parser.add_argument("--setting", action="append", required=True, help="NAME=VALUE ...; repeat, at least 2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=10, help="timed calls per setting and round")
    parser.add_argument("--quick", action="store_true", help="the driver's quick cases")
    args = parser.parse_args()
    settings = [parse_setting(s) for s in args.setting]
    if len(settings) < 2:
        parser.error("give at least two --setting")
    names = sorted({name for s in settings for name in s})
    base = {name: os.environ.get(name) for name in names}
    unknown = set(args.ops.split(",")) - set(FAMILIES)
    if unknown:
        parser.error(f"unknown --ops {sorted(unknown)}; choose from {', '.join(FAMILIES)}")

    def apply(setting: dict) -> None:  # a setting on top of the environment as it was
        for name in names:
            value = setting.get(name, base[name])
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    print(f"{torch.cuda.get_device_name()}; settings: " + " | ".join(s or "(as is)" for s in args.setting))
    try:
        for family in args.ops.split(","):
            for op, case, _, nbytes, make, *_ in FAMILIES[family](args.quick):
                if args.match not in case:
                    continue
                if "(graph)" in case:  # captured under each setting, on the same input sets
                    fns = []
                    for setting in settings:
                        apply(setting)
                        torch.manual_seed(0)
                        fns.append(rotated(make, max(nbytes, 1)))
                else:
                    apply({})
                    fns = [rotated(make, max(nbytes, 1))] * len(settings)
                times = [[] for _ in settings]
                for r in range(args.rounds):
                    for j in range(len(settings)):
                        i = (j + r) % len(settings)
                        apply(settings[i])
                        times[i].append(median_ms(fns[i], args.reps))
                del fns
                torch.cuda.empty_cache()
                first = statistics.median(times[0])
                cells = []
                for t in times:
                    m = statistics.median(t)
                    cells.append(f"{m:.4f} ms [{min(t):.4f}-{max(t):.4f}] {first / m:.3f}x")
                print(f"{op} {case}: " + " | ".join(cells), flush=True)
    finally:
        apply({})


if __name__ == "__main__":
    main()
