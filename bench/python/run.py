"""Times every lcattn op on the GPU at the shapes of SPEC.md against the best baseline in the same run.

    python bench/python/run.py [--ops sparse_attn,topk,...] [--quick] [--out DIR]

Measures its own ceilings first (dense bf16 matmul, device-to-device copy), then per case the
median time over rotated input sets (CUDA events, after warm-up), TFLOP/s, TB/s, the fraction of
the ceiling (the larger of FLOPs / matmul rate and bytes / copy rate, over the time) and the ratio
to each baseline. Writes results.json and results.csv under --out and prints a table last.
"""
import argparse
import csv
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

from lcattn import ops, reference

DEV = "cuda"
BF = torch.bfloat16
L2_BYTES = 50 * 2**20


def median_ms(fns: List[Callable[[], object]], reps: int) -> float:
    """Median of reps timed calls, cycling through input sets so that L2 holds none of them."""
    for fn in fns[:3]:
        fn()
    torch.cuda.synchronize()
    times = []
    for r in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        fn = fns[r % len(fns)]
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def rotated(make: Callable[[], Callable[[], object]], set_bytes: int) -> List[Callable[[], object]]:
    """Enough input sets (each built by make()) to exceed twice the L2 cache."""
    return [make() for _ in range(min(8, max(1, math.ceil(2 * L2_BYTES / max(set_bytes, 1)))))]


@dataclass
class Result:
    op: str
    case: str
    ms: float
    tflops: float
    tbps: float
    ceiling_fraction: float
    baselines: Dict[str, float] = field(default_factory=dict)  # name -> baseline ms / our ms


def measure(op, case, flops, nbytes, ours, baselines, ceilings, reps) -> Result:
    ms = median_ms(ours, reps)
    floor_ms = max(flops / ceilings["tflops"] / 1e9, nbytes / ceilings["tbps"] / 1e9)
    ratios = {}
    for name, fns in baselines.items():
        try:
            ratios[name] = median_ms(fns, max(3, reps // 4)) / ms
        except (RuntimeError, torch.OutOfMemoryError) as err:  # a baseline that cannot run this shape
            ratios[name] = float("nan")
            print(f"\n  {name} skipped at {case}: {str(err).splitlines()[0][:100]}", file=sys.stderr)
            torch.cuda.empty_cache()
    return Result(op, case, ms, flops / ms / 1e9, nbytes / ms / 1e9, floor_ms / ms, ratios)


def ceilings() -> Dict[str, float]:
    a, b = torch.randn(8192, 8192, device=DEV, dtype=BF), torch.randn(8192, 8192, device=DEV, dtype=BF)
    mm = median_ms([lambda: a @ b], 20)
    src = torch.randn(2**29, device=DEV)  # 2 GiB
    dst = torch.empty_like(src)
    cp = median_ms([lambda: dst.copy_(src)], 20)
    return {"tflops": 2 * 8192**3 / mm / 1e9, "tbps": 2 * src.nbytes / cp / 1e9}


# ---- cases --------------------------------------------------------------------------------------

def attention_inputs(B, S, H, K, N, pos, window=128, D=512, sparse=True):
    q = torch.randn(B, S, H, D, device=DEV, dtype=BF)
    kv = torch.randn(B, S + window - 1, D, device=DEV, dtype=BF)
    ckv = torch.randn(B, N, D, device=DEV, dtype=BF)
    q_start = torch.full((B,), pos, dtype=torch.int32, device=DEV)
    kv_start = q_start - (window - 1)
    sink = torch.randn(H, device=DEV)
    freqs = 160000.0 ** (-torch.arange(0, 64, 2, device=DEV).float() / 64)
    idx = torch.argsort(torch.rand(B * S, N, device=DEV), dim=1)[:, :K].to(torch.int32).view(B, S, K) if sparse else None
    return q, kv, kv_start, q_start, ckv, sink, freqs, idx


def unfused_sparse(q, kv, kv_start, q_start, ckv, sink, idx, window=128):
    """Stock-torch sparse attention: gather the keys, bmm, softmax with the sink, bmm."""
    B, S, H, D = q.shape
    rows = torch.arange(S, device=DEV)[:, None] + torch.arange(window, device=DEV)  # window rows per query
    keys = torch.cat((kv[:, rows], ops.gather_rows(ckv, idx)), dim=2)  # [B, S, U, D]
    logits = torch.einsum("bshd,bsud->bshu", q, keys).float() * D ** -0.5
    mx = logits.amax(-1, keepdim=True)
    e = torch.exp(logits - mx)
    p = e / (e.sum(-1, keepdim=True) + torch.exp(sink[:, None] - mx))
    return torch.einsum("bshu,bsud->bshd", p.to(BF), keys)


def sparse_attn_cases(quick):
    shapes = [("flash", 1, 4096, 64, 512), ("pro", 1, 4096, 128, 1024)]
    if not quick:
        shapes.insert(1, ("flash", 1, 16384, 64, 512))
    for model, B, S, H, K in shapes:
        N = 32768
        def make(B=B, S=S, H=H, K=K, N=N):
            a = attention_inputs(B, S, H, K, N, pos=4 * N - S)
            return lambda: ops.sparse_attn(*a[:5], a[7], a[5], a[6])
        def make_base(B=B, S=S, H=H, K=K, N=N):
            a = attention_inputs(B, S, H, K, N, pos=4 * N - S)
            return lambda: unfused_sparse(*a[:5], a[5], a[7])
        flops = 4 * H * 512 * (K + 128) * S * B
        nbytes = 2 * (2 * B * S * H * 512 + B * S * (K + 128) * 512)  # q, out, keys once per token
        yield "sparse_attn", f"{model} prefill S={S} H={H} keys={K}+128", flops, nbytes, make, {"unfused torch": make_base}
    for B in (64, 128):
        H, K, N = 64, 512, 32768
        def make(B=B):
            a = attention_inputs(B, 1, H, K, N, pos=4 * N - 1)
            return lambda: ops.sparse_attn(*a[:5], a[7], a[5], a[6])
        def make_base(B=B):
            a = attention_inputs(B, 1, H, K, N, pos=4 * N - 1)
            return lambda: unfused_sparse(*a[:5], a[5], a[7])
        flops = 4 * H * 512 * (K + 128) * B
        nbytes = 2 * B * (K + 128) * 512  # the keys each sequence reads
        yield "sparse_attn", f"flash decode B={B} keys={K}+128", flops, nbytes, make, {"unfused torch": make_base}


def dense_attn_cases(quick):
    for S in (1024,) if quick else (1024, 4096):
        N, H = 1024, 64  # an HCA layer at 128K context
        def make(S=S):
            a = attention_inputs(1, S, H, 0, N, pos=128 * N - S, sparse=False)
            return lambda: ops.dense_attn(*a[:5], a[5], a[6], ratio=128)
        flops = 4 * H * 512 * (N + 128) * S
        yield "dense_attn", f"flash hca prefill S={S} entries={N}", flops, 2 * (2 * S * H * 512 + N * 512), make, {}


def indexer_cases(quick):
    for S, N in ((1024, 32768),) if quick else ((1024, 32768), (4096, 32768)):
        def make(S=S, N=N):
            q = torch.randn(1, S, 64, 128, device=DEV, dtype=BF)
            w = torch.randn(1, S, 64, device=DEV) * 0.01
            keys = torch.randn(1, N, 128, device=DEV, dtype=BF)
            qs = torch.tensor([4 * N - S], dtype=torch.int32, device=DEV)
            return q, w, keys, qs
        def ours(S=S, N=N):
            a = make(S, N)
            return lambda: ops.indexer_topk(*a, 512)
        def unfused(S=S, N=N):
            q, w, keys, qs = make(S, N)
            return lambda: torch.topk(torch.einsum("bshd,bnd->bshn", q, keys).relu_().float().mul_(
                w[..., None]).sum(2), 512, dim=-1)
        flops = 2 * 64 * 128 * N * S
        yield "indexer_topk", f"S={S} entries={N} k=512", flops, 2 * (S * 64 * 128 + N * 128), ours, {
            "unfused torch": unfused}


def topk_cases(quick):
    for R, N in ((64, 262144), (4096, 32768)) if quick else ((1, 262144), (64, 262144), (4096, 32768), (4096, 262144)):
        def make(R=R, N=N):
            s = torch.randn(R, N, device=DEV)
            return lambda: ops.topk_indices(s, 512)
        def base(R=R, N=N):
            s = torch.randn(R, N, device=DEV)
            return lambda: torch.topk(s, 512, dim=-1)
        yield "topk_indices", f"rows={R} N={N} k=512", 0, 4 * R * N, make, {"torch.topk": base}


def gemm_cases(quick):
    E, N, K = 256, 4096, 4096  # V4-Flash gate + up
    for per in (16, 64) if quick else (16, 64, 256):
        def inputs(per=per):
            x = torch.randn(E * per, K, device=DEV, dtype=BF)
            w = torch.randn(E, N, K, device=DEV, dtype=BF) * K ** -0.5
            offsets = torch.arange(0, E + 1, device=DEV, dtype=torch.int32) * per
            return x, w, offsets
        def ours(per=per):
            x, w, o = inputs(per)
            return lambda: ops.grouped_gemm_contiguous(x, w, o)
        def base(per=per):
            x, w, o = inputs(per)
            return lambda: F.grouped_mm(x, w.transpose(-2, -1), offs=o[1:])
        flops = 2 * E * per * N * K
        yield "grouped_gemm_contiguous", f"E={E} rows/expert={per} N={N} K={K}", flops, 2 * E * N * K, ours, {
            "F.grouped_mm": base}


def compress_cases(quick):
    T = 16384 if quick else 131072
    for name, ratio, overlap in (("csa", 4, True), ("hca", 128, False)):
        width = (2 if overlap else 1) * 512
        def inputs(ratio=ratio, overlap=overlap, width=width):
            kv, score = torch.randn(1, T, width, device=DEV), torch.randn(1, T, width, device=DEV)
            ape, w = torch.randn(ratio, width, device=DEV), torch.ones(512, device=DEV)
            freqs = 160000.0 ** (-torch.arange(0, 64, 2, device=DEV).float() / 64)
            return kv, score, ape, w, freqs
        def ours(ratio=ratio, overlap=overlap, width=width):
            kv, score, ape, w, f = inputs(ratio, overlap, width)
            rk, rs = ops.compress_state(1, ratio, width, overlap, DEV)
            out = torch.empty(1, T // ratio, 512, device=DEV, dtype=BF)
            lens, start = torch.tensor([T], dtype=torch.int32, device=DEV), torch.zeros(1, dtype=torch.int32, device=DEV)
            return lambda: ops.compress_kv(kv, score, lens, start, rk, rs, ape, w, f, out, ratio, overlap)
        def base(ratio=ratio, overlap=overlap, width=width):
            a = inputs(ratio, overlap, width)
            return lambda: reference.compress_kv(*a, ratio, overlap)
        nbytes = 2 * T * width * 4 + T // ratio * 512 * 2
        yield "compress_kv", f"{name} prefill T={T}", 0, nbytes, ours, {"unfused torch": base}


FAMILIES = {"sparse_attn": sparse_attn_cases, "dense_attn": dense_attn_cases, "indexer_topk": indexer_cases,
            "topk_indices": topk_cases, "grouped_gemm": gemm_cases, "compress_kv": compress_cases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", default=",".join(FAMILIES), help=f"comma list of {', '.join(FAMILIES)}")
    parser.add_argument("--quick", action="store_true", help="fewer and smaller cases")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--out", default="bench_results")
    args = parser.parse_args()
    torch.manual_seed(0)
    ceil = ceilings()
    print(f"{torch.cuda.get_device_name()}: ceilings {ceil['tflops']:.0f} TFLOP/s bf16 matmul, "
          f"{ceil['tbps']:.2f} TB/s copy", flush=True)
    cases = [c for name in args.ops.split(",") for c in FAMILIES[name](args.quick)]
    results = []
    for i, (op, case, flops, nbytes, ours, baselines) in enumerate(cases):
        sys.stderr.write(f"\r[{i + 1}/{len(cases)}] {op} {case}{' ' * 20}")
        sys.stderr.flush()
        set_bytes = max(nbytes, 1)
        fns = rotated(ours, set_bytes)
        base_fns = {name: rotated(make, set_bytes) for name, make in baselines.items()}
        results.append(measure(op, case, flops, nbytes, fns, base_fns, ceil, args.reps))
        del fns, base_fns
        torch.cuda.empty_cache()
    sys.stderr.write("\n")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "ceilings": ceil,
                   "results": [asdict(r) for r in results]}, f, indent=1)
    with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["op", "case", "ms", "tflops", "tbps", "ceiling_fraction", "baseline", "baseline_over_ours"])
        for r in results:
            for name, ratio in (r.baselines or {"": float("nan")}).items():
                writer.writerow([r.op, r.case, f"{r.ms:.4f}", f"{r.tflops:.2f}", f"{r.tbps:.3f}",
                                 f"{r.ceiling_fraction:.4f}", name, f"{ratio:.3f}"])
    print(f"{'op':<24}{'case':<42}{'ms':>10}{'TFLOP/s':>9}{'TB/s':>7}{'ceil':>7}  baseline/ours")
    for r in results:
        base = ", ".join(f"{n} {x:.2f}x" for n, x in r.baselines.items())
        print(f"{r.op:<24}{r.case:<42}{r.ms:>10.3f}{r.tflops:>9.1f}{r.tbps:>7.2f}{r.ceiling_fraction:>7.1%}  {base}")


if __name__ == "__main__":
    main()
