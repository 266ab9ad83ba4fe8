"""The decode gate + up grouped GEMM (6 of E experts per token plus the shared expert) timed as one
call per CUDA graph, as the driver does, and as several calls on different weights in one graph, as
inside a decode step's graph (no graph-launch latency before the call); with the kernels' GPU time:

    python bench/python/decode_gemm.py [--calls-per-graph 4] [--repeat 2]
"""
import argparse

import torch
from cases.moe import DECODE_DIMS, decode_routing  # bench/python/cases/, beside this script

from lcattn import ops
from lcattn.testing.bench import ceilings, graphed, kernel_profile, median_ms


def time_case(model: str, T: int, calls: int, repeat: int, copy: float) -> None:
    E, N, K = DECODE_DIMS[model]
    counts = decode_routing(T, E)
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0).to(torch.int32)])
    w_bytes = 2 * int((counts > 0).sum()) * N * K
    xs = [torch.randn(int(counts.sum()), K, device="cuda", dtype=torch.bfloat16) for _ in range(calls)]
    ws = [torch.randn(E + 1, N, K, device="cuda", dtype=torch.bfloat16) for _ in range(calls)]
    one = graphed(lambda: ops.grouped_gemm_contiguous(xs[0], ws[0], offsets))
    many = graphed(lambda: [ops.grouped_gemm_contiguous(x, w, offsets) for x, w in zip(xs, ws)])
    for _ in range(repeat):
        ms, per = median_ms([one], 60), median_ms([many], 30) / calls
        print(f"{model} T={T}: one per graph {ms * 1e3:.1f} us ({w_bytes / ms / 1e9 / copy:.1%} of copy), "
              f"{calls} per graph {per * 1e3:.1f} us per call ({w_bytes / per / 1e9 / copy:.1%})")
    print("\n".join(kernel_profile(one, 20)[2][:2]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default="1,8")
    parser.add_argument("--calls-per-graph", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2, help="times each row is measured (its spread)")
    args = parser.parse_args()
    torch.manual_seed(0)
    copy = ceilings()["tbps"]
    print(f"copy rate {copy:.2f} TB/s")
    for model in DECODE_DIMS:
        calls = args.calls_per_graph if model == "flash" else max(1, args.calls_per_graph // 2)  # Pro: 34 GB a set
        for T in map(int, args.tokens.split(",")):
            time_case(model, T, calls, args.repeat, copy)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
