"""Times every lcattn op on the GPU at the shapes of SPEC.md against the best baseline in the same run.

    python bench/python/run.py [--ops sparse_attn,dense_attn,...,layers] [--quick] [--contexts 8192,...]
                               [--reps N] [--out DIR]

Measures its own ceilings first (dense bf16 matmul, device-to-device copy), then per case the
median time over rotated input sets (CUDA events, after warm-up), TFLOP/s, TB/s, the fraction of
the ceiling (the larger of FLOPs / matmul rate and bytes / copy rate, over the time) and the ratio
to each baseline: unfused stock-torch ops, torch.topk, F.grouped_mm, FlexAttention, and FlashMLA
when it is importable. The `layers` family times one V4-Flash CSA and one HCA attention layer at
8K to 1M context (bench/python/layers.py). Writes results.json, results.csv, layers.csv and the
plots ops.png and layers.png under --out, and prints a table last.
"""
import argparse
import csv
import functools
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List

import layers  # bench/python/layers.py, beside this script
import torch
import torch.nn.functional as F

from lcattn import ops, reference
from lcattn.modules.rope import plain_inv_freq
from lcattn.testing.bench import Progress, ceilings, graphed, median_ms, rotated

ROOT = Path(__file__).resolve().parents[2]
DEV = "cuda"
BF = torch.bfloat16


@dataclass
class Result:
    op: str
    case: str
    ms: float
    tflops: float
    tbps: float
    ceiling_fraction: float
    baselines: Dict[str, float] = field(default_factory=dict)  # name -> baseline ms / our ms
    context: int = 0  # the context length the case stands for, where it has one


def measure(op, case, flops, nbytes, make_ours, make_baselines, ceilings, reps, context=0) -> Result:
    """Times ours, then each baseline; each one's inputs are made just before it runs and freed after,
    so that no baseline's state (memory, compiled graphs) is alive while another runs."""
    set_bytes = max(nbytes, 1)
    fns = rotated(make_ours, set_bytes)
    ms = median_ms(fns, reps)
    del fns
    torch.cuda.empty_cache()
    floor_ms = max(flops / ceilings["tflops"] / 1e9, nbytes / ceilings["tbps"] / 1e9)
    ratios = {}
    for name, make in make_baselines.items():
        try:
            fns = rotated(make, set_bytes)
            ratios[name] = median_ms(fns, max(3, reps // 4)) / ms
        except (RuntimeError, torch.OutOfMemoryError) as err:  # a baseline that cannot run this shape
            ratios[name] = float("nan")
            print(f"\n  {name} skipped at {case}: {str(err).splitlines()[0][:100]}", file=sys.stderr)
        fns = None
        torch.cuda.empty_cache()
    return Result(op, case, ms, flops / ms / 1e9, nbytes / ms / 1e9, floor_ms / ms, ratios, context)


# ---- cases --------------------------------------------------------------------------------------

def attention_inputs(B, S, H, K, N, pos, window=128, D=512, sparse=True):
    q = torch.randn(B, S, H, D, device=DEV, dtype=BF)
    kv = torch.randn(B, S + window - 1, D, device=DEV, dtype=BF)
    ckv = torch.randn(B, N, D, device=DEV, dtype=BF)
    q_start = torch.full((B,), pos, dtype=torch.int32, device=DEV)
    kv_start = q_start - (window - 1)
    sink = torch.randn(H, device=DEV)
    freqs = plain_inv_freq(160000.0, 64, DEV)
    idx = None
    if sparse:
        idx = torch.argsort(torch.rand(B * S, N, device=DEV), dim=1)[:, :K].to(torch.int32).view(B, S, K)
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


def flash_mla_sparse():
    """FlashMLA's sparse prefill, from the flash_mla package or the library scripts/build_flashmla.sh
    builds ($LCATTN_FLASHMLA_LIB, default build/baselines/flashmla_baseline.so); None if neither loads.
    Returns prepare(attention inputs) -> a call of the kernel alone: FlashMLA reads one key pool by
    index, so the window rows and the entries are joined and the window indices added beforehand."""
    try:
        import flash_mla
        def kernel(q, pool, full, scale, sink):
            return flash_mla.flash_mla_sparse_fwd(q, pool, full, scale, 512, attn_sink=sink)[0]
    except ImportError:
        lib = os.environ.get("LCATTN_FLASHMLA_LIB", str(ROOT / "build/baselines/flashmla_baseline.so"))
        try:
            torch.ops.load_library(lib)
        except OSError:
            return None
        kernel = torch.ops.flashmla_baseline.sparse_prefill
    def prepare(q, kv, kv_start, q_start, ckv, sink, idx, window=128):
        B, S, H, D = q.shape
        assert B == 1, "FlashMLA's sparse prefill takes one sequence"
        pool = torch.cat((kv[0], ckv[0]), 0)[:, None]  # [L + N, 1, D]: window key j of query s is row s + j
        win = torch.arange(S, device=DEV)[:, None] + torch.arange(window, device=DEV)
        full = torch.cat((win.int(), idx[0] + kv.shape[1]), 1)[:, None].contiguous()  # [S, 1, window + K]
        q0 = q[0]
        return lambda: kernel(q0, pool, full, D ** -0.5, sink)
    return prepare


def flash_mla_agrees(prepare) -> bool:
    """Same result as lcattn's sparse_attn on a small case (dims before the RoPE ones: FlashMLA leaves
    the output rotated, lcattn undoes the rotation), so the table compares like with like."""
    a = attention_inputs(1, 64, 64, 512, 4096, pos=4 * 4096 - 64)
    ours = ops.sparse_attn(*a[:5], a[7], a[5], a[6])[0][0, ..., :448].float()
    try:
        theirs = prepare(*a[:6], a[7])()[..., :448].float()
    except RuntimeError as err:
        print(f"FlashMLA failed on a small case: {err}", file=sys.stderr)
        return False
    return torch.allclose(ours, theirs, atol=2e-2, rtol=2e-2)


def sparse_attn_cases(quick):
    # Entries of a 128K context (32 MB of keys, near the L2 size) with uniformly random picks, and of a
    # 16K context (4 MB, L2-resident): the gather's cost depends on where the picked rows live.
    shapes = [("flash", 4096, 64, 512, 32768), ("pro", 4096, 128, 1024, 32768)]
    if not quick:
        shapes = [("flash", 4096, 64, 512, 32768), ("flash", 16384, 64, 512, 32768), ("flash", 65536, 64, 512, 32768),
                  ("flash", 16384, 64, 512, 4096), ("pro", 4096, 128, 1024, 32768), ("pro", 16384, 128, 1024, 32768),
                  ("pro", 16384, 128, 1024, 4096)]
    flash_mla = flash_mla_sparse()
    if flash_mla is not None and not flash_mla_agrees(flash_mla):
        print("FlashMLA left out of the table: it does not match lcattn's sparse_attn on a small case", file=sys.stderr)
        flash_mla = None
    for model, S, H, K, N in shapes:
        def make(S=S, H=H, K=K, N=N):
            a = attention_inputs(1, S, H, K, N, pos=4 * N - S)
            return lambda: ops.sparse_attn(*a[:5], a[7], a[5], a[6])
        def make_base(S=S, H=H, K=K, N=N):
            a = attention_inputs(1, S, H, K, N, pos=4 * N - S)
            return lambda: unfused_sparse(*a[:5], a[5], a[7])
        def make_flash_mla(S=S, H=H, K=K, N=N):
            a = attention_inputs(1, S, H, K, N, pos=4 * N - S)
            return flash_mla(*a[:6], a[7])
        baselines = {"unfused torch": make_base} if S <= 16384 else {}  # the gathered keys need S * 640 KB
        if flash_mla is not None:
            baselines["FlashMLA"] = make_flash_mla
        flops = 4 * H * 512 * (K + 128) * S
        nbytes = 2 * (2 * S * H * 512 + S * (K + 128) * 512)  # q, out, keys once per token
        yield "sparse_attn", f"{model} prefill S={S} H={H} keys={K}+128 N={N}", flops, nbytes, make, baselines
    # Decode as a serving loop runs it: captured in a CUDA graph (no host checks), ours and the baseline.
    for B in (1, 64, 128):
        H, K, N = 64, 512, 32768
        def make(B=B, H=H, K=K, N=N):
            a = attention_inputs(B, 1, H, K, N, pos=4 * N - 1)
            return graphed(lambda: ops.sparse_attn(*a[:5], a[7], a[5], a[6]))
        def make_base(B=B, H=H, K=K, N=N):
            a = attention_inputs(B, 1, H, K, N, pos=4 * N - 1)
            return graphed(lambda: unfused_sparse(*a[:5], a[5], a[7]))
        flops = 4 * H * 512 * (K + 128) * B
        nbytes = 2 * B * (K + 128) * 512  # the keys each sequence reads
        yield "sparse_attn", f"flash decode B={B} keys={K}+128 (graph)", flops, nbytes, make, {
            "unfused torch": make_base}


def flex_dense(q, kv, kv_start, q_start, ckv, sink, window=128, ratio=128):
    """FlexAttention over [window rows | entries] with a visibility mask; the sink folded in from the lse."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    B, S, H, D = q.shape
    L = kv.shape[1]
    keys = torch.cat((kv, ckv), 1)[:, None]  # [B, 1, L + N, D]
    def visible(b, h, qi, ki):
        p, s = q_start[b] + qi, kv_start[b] + ki
        return torch.where(ki < L, (s <= p) & (s > p - window), ki - L < (p + 1) // ratio)
    mask = create_block_mask(visible, B, None, S, keys.shape[2], device=DEV)
    compiled = torch.compile(flex_attention)
    def run():
        out, lse = compiled(q.transpose(1, 2), keys, keys, block_mask=mask, enable_gqa=True, return_lse=True)
        return out * torch.sigmoid(lse - sink[:, None])[..., None]  # exp(lse) / (exp(lse) + exp(sink))
    return run


def dense_attn_cases(quick):
    # An HCA layer's prefill chunk of S queries at a context of 128 * N tokens.
    for S, N in ((4096, 1024),) if quick else ((1024, 1024), (4096, 1024), (4096, 4096), (4096, 8192)):
        H = 64
        # Every loop value a builder reads is bound as a default: the driver lists all cases before it runs any.
        def make(S=S, N=N, H=H):
            a = attention_inputs(1, S, H, 0, N, pos=128 * N - S, sparse=False)
            return lambda: ops.dense_attn(*a[:5], a[5], a[6], ratio=128)
        def make_flex(S=S, N=N, H=H):
            a = attention_inputs(1, S, H, 0, N, pos=128 * N - S, sparse=False)
            return flex_dense(*a[:6])
        flops = 4 * H * 512 * (N + 128) * S
        yield "dense_attn", f"flash hca prefill S={S} entries={N}", flops, 2 * (2 * S * H * 512 + N * 512), make, {
            "FlexAttention": make_flex}, 128 * N


def indexer_cases(quick):
    # A prefill chunk of S queries of a CSA layer at a context of 4 * N tokens.
    for S, N in ((4096, 32768),) if quick else ((1024, 32768), (4096, 8192), (4096, 32768), (4096, 131072),
                                                 (4096, 262144)):
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
        # The unfused path holds S * 64 * N fp32 scores: 34 GB at N = 32768.
        baselines = {"unfused torch": unfused} if N <= 32768 else {}
        yield "indexer_topk", f"S={S} entries={N} k=512", flops, 2 * (S * 64 * 128 + N * 128), ours, baselines, 4 * N


def topk_cases(quick):
    for R, N in ((64, 262144), (4096, 32768)) if quick else ((1, 262144), (64, 262144), (4096, 8192), (4096, 32768),
                                                              (4096, 131072), (4096, 262144)):
        def make(R=R, N=N):
            s = torch.randn(R, N, device=DEV)
            return lambda: ops.topk_indices(s, 512)
        def base(R=R, N=N):
            s = torch.randn(R, N, device=DEV)
            return lambda: torch.topk(s, 512, dim=-1)
        # Rows of a 4096-query prefill chunk form the context curve; 1 and 64 rows are decode batches.
        yield ("topk_indices", f"rows={R} N={N} k=512", 0, 4 * R * N, make, {"torch.topk": base},
               4 * N if R == 4096 else 0)


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
    yield from decode_gemm_cases(quick)


def decode_routing(T, E, k=6):
    """Rows per group for T decode tokens: k distinct random experts of E per token, and all T rows
    on group E, the shared expert: [E + 1] int32 counts."""
    experts = torch.rand(T, E).argsort(dim=1)[:, :k].flatten()
    counts = torch.bincount(experts, minlength=E + 1)
    counts[E] = T
    return counts.to(torch.int32).to(DEV)


def decode_gemm_cases(quick):
    """Decode's gate + up GEMM: 1, 8, 64 tokens on 6 of 256 (Flash) / 384 (Pro) experts plus the shared
    expert as one more group, graph-replayed. Bytes: the weights of the groups that get rows, plus x, y."""
    dims = {"flash": (256, 2 * 2048, 4096), "pro": (384, 2 * 3072, 7168)}
    for model, (E, N, K) in dims.items():
        for T in (1, 64) if quick else (1, 8, 64):
            counts = decode_routing(T, E)
            M, active = int(counts.sum()), int((counts > 0).sum())
            offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0).to(torch.int32)])
            w_bytes = 2 * active * N * K
            def weights(E=E, N=N, K=K):
                return torch.randn(E + 1, N, K, device=DEV, dtype=BF) * K ** -0.5
            def ours(M=M, K=K, offsets=offsets, weights=weights):
                x, w = torch.randn(M, K, device=DEV, dtype=BF), weights()
                return graphed(lambda: ops.grouped_gemm_contiguous(x, w, offsets))
            def masked(T=T, K=K, counts=counts, weights=weights):
                x, w = torch.randn(counts.numel(), T, K, device=DEV, dtype=BF), weights()
                return graphed(lambda: ops.grouped_gemm_masked(x, w, counts))
            def base(M=M, K=K, offsets=offsets, weights=weights):
                x, w = torch.randn(M, K, device=DEV, dtype=BF), weights()
                return graphed(lambda: F.grouped_mm(x, w.transpose(-2, -1), offs=offsets[1:]))
            case = f"{model} decode T={T} {active} groups N={N} K={K}"
            nbytes = w_bytes + 2 * M * (N + K)
            yield "grouped_gemm_contiguous", case, 2 * M * N * K, nbytes, ours, {"F.grouped_mm": base}
            yield "grouped_gemm_masked", case, 2 * M * N * K, nbytes, masked, {"F.grouped_mm contiguous": base}


def torch_moe_block(x, gate, bias, w_gate_up, w_down, k, route_scale, limit):
    """The MoE block's routed experts on stock torch ops and F.grouped_mm, capturable (no host sync)."""
    T, E = x.shape[0], w_gate_up.shape[0]
    s = F.softplus(F.linear(x.float(), gate)).sqrt()
    idx = torch.topk(s + bias, k, dim=-1).indices
    weights = s.gather(1, idx)
    weights = weights / weights.sum(-1, keepdim=True) * route_scale
    flat = idx.flatten()
    order = torch.argsort(flat, stable=True)
    ones = torch.ones_like(flat, dtype=torch.int32)
    counts = torch.zeros(E, dtype=torch.int32, device=x.device).index_add_(0, flat, ones)
    offs = counts.cumsum(0).to(torch.int32)
    gate_up = F.grouped_mm(x[order // k], w_gate_up.transpose(-2, -1), offs=offs)
    g, u = gate_up.float().chunk(2, dim=-1)
    h = (F.silu(g.clamp(max=limit)) * u.clamp(-limit, limit)).to(x.dtype)
    y = F.grouped_mm(h, w_down.transpose(-2, -1), offs=offs)
    back = torch.empty_like(y)
    back[order] = y
    return (back.view(T, k, -1).float() * weights[..., None]).sum(1).to(x.dtype)


def lcattn_moe_block(x, gate, bias, w_gate_up, w_down, k, route_scale, limit):
    weights, idx = ops.moe_route(F.linear(x.float(), gate), k, route_scale, bias=bias)
    return ops.moe_experts(x, weights, idx, w_gate_up, w_down, limit)


def moe_block_cases(quick):
    """The routed half of a V4-Flash MoE block (router GEMM, route, permute, gate + up, SwiGLU, down,
    weighted unpermute) against the same block on stock torch; graph-replayed."""
    E, D, I, k = 256, 4096, 2048, 6
    for T in (1, 64) if quick else (1, 64, 8192):
        def inputs(T=T):
            x = torch.randn(T, D, device=DEV, dtype=BF)
            gate, bias = torch.randn(E, D, device=DEV) * D ** -0.5, torch.randn(E, device=DEV) * 0.1
            w_gate_up = torch.randn(E, 2 * I, D, device=DEV, dtype=BF) * D ** -0.5
            w_down = torch.randn(E, D, I, device=DEV, dtype=BF) * I ** -0.5
            return x, gate, bias, w_gate_up, w_down, k, 1.5, 10.0
        def ours(T=T, fused="0"):
            x, gate, bias, w_gate_up, *rest = inputs(T)
            args = (x, gate, bias, ops.interleave_gate_up(w_gate_up), *rest)
            os.environ["LCATTN_MOE_FUSED_SWIGLU"] = fused  # read by moe_experts when the graph is captured
            return graphed(lambda: lcattn_moe_block(*args))
        def base(T=T):
            args = inputs(T)
            return graphed(lambda: torch_moe_block(*args))
        active = E * (1 - (1 - k / E) ** T)  # experts that get a token, expected under random routing
        flops = 2 * T * k * 3 * I * D
        nbytes = round(2 * 3 * I * D * active + 4 * E * D)
        for fused, label in (("0", ""), ("1", " fused SwiGLU")):
            yield ("moe_block", f"flash T={T} E={E} k={k}{label}", flops, nbytes,
                   functools.partial(ours, fused=fused), {"stock torch": base})


def compress_cases(quick):
    T = 16384 if quick else 131072
    for name, ratio, overlap in (("csa", 4, True), ("hca", 128, False)):
        width = (2 if overlap else 1) * 512
        def inputs(ratio=ratio, overlap=overlap, width=width):
            kv, score = torch.randn(1, T, width, device=DEV), torch.randn(1, T, width, device=DEV)
            ape, w = torch.randn(ratio, width, device=DEV), torch.ones(512, device=DEV)
            freqs = plain_inv_freq(160000.0, 64, DEV)
            return kv, score, ape, w, freqs
        def ours(ratio=ratio, overlap=overlap, width=width):
            kv, score, ape, w, f = inputs(ratio, overlap, width)
            rk, rs = ops.compress_state(1, ratio, width, overlap, DEV)
            out = torch.empty(1, T // ratio, 512, device=DEV, dtype=BF)
            lens = torch.tensor([T], dtype=torch.int32, device=DEV)
            start = torch.zeros(1, dtype=torch.int32, device=DEV)
            return lambda: ops.compress_kv(kv, score, lens, start, rk, rs, ape, w, f, out, ratio, overlap)
        def base(ratio=ratio, overlap=overlap, width=width):
            a = inputs(ratio, overlap, width)
            return lambda: reference.compress_kv(*a, ratio, overlap)
        nbytes = 2 * T * width * 4 + T // ratio * 512 * 2
        yield "compress_kv", f"{name} prefill T={T}", 0, nbytes, ours, {"unfused torch": base}


FAMILIES = {"sparse_attn": sparse_attn_cases, "dense_attn": dense_attn_cases, "indexer_topk": indexer_cases,
            "topk_indices": topk_cases, "grouped_gemm": gemm_cases, "moe_block": moe_block_cases,
            "compress_kv": compress_cases}


def write_plots(results: List[Result], layer_rows: List[dict], out_dir: str) -> None:
    """ops.png: time and fraction of the ceiling against context for the ops measured at several
    contexts; layers.png: prefill time and decode ms per token against context per layer kind."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots", file=sys.stderr)
        return
    by_op = {}
    for r in results:
        if r.context:
            by_op.setdefault(r.op, []).append(r)
    if by_op:
        fig, (ax_t, ax_c) = plt.subplots(1, 2, figsize=(12, 4.5))
        for op, rs in by_op.items():
            rs.sort(key=lambda r: r.context)
            ax_t.plot([r.context for r in rs], [r.ms for r in rs], "o-", label=op)
            ax_c.plot([r.context for r in rs], [100 * r.ceiling_fraction for r in rs], "o-", label=op)
        for ax, what in ((ax_t, "median time (ms)"), (ax_c, "fraction of the measured ceiling (%)")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("context (tokens)")
            ax.set_ylabel(what)
            ax.grid(alpha=0.3)
            ax.legend()
        ax_t.set_yscale("log")
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "ops.png"), dpi=110)
    if layer_rows:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for kind in sorted({r["layer"] for r in layer_rows}):
            rows = sorted((r for r in layer_rows if r["layer"] == kind), key=lambda r: r["context"])
            ctx = [r["context"] for r in rows]
            axes[0].plot(ctx, [r["prefill_s"] for r in rows], "o-", label=f"{kind} lcattn")
            for b in (1, 64):
                axes[1].plot(ctx, [r[f"decode_ms_b{b}"] for r in rows], "o-", label=f"{kind} lcattn B={b}")
            un = [r for r in rows if "unfused_prefill_s" in r]
            if un:
                axes[0].plot([r["context"] for r in un], [r["unfused_prefill_s"] for r in un], "x--",
                             label=f"{kind} unfused torch")
        for ax, what in ((axes[0], "prefill time (s)"), (axes[1], "decode ms per token")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("context (tokens)")
            ax.set_ylabel(what)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle("one V4-Flash attention layer")
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "layers.png"), dpi=110)


def write_tables(results: List[Result], layer_rows: List[dict], meta: dict, out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({**meta, "results": [asdict(r) for r in results], "layers": layer_rows}, f, indent=1)
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["op", "case", "context", "ms", "tflops", "tbps", "ceiling_fraction", "baseline",
                         "baseline_over_ours"])
        for r in results:
            for name, ratio in (r.baselines or {"": float("nan")}).items():
                writer.writerow([r.op, r.case, r.context, f"{r.ms:.4f}", f"{r.tflops:.2f}", f"{r.tbps:.3f}",
                                 f"{r.ceiling_fraction:.4f}", name, f"{ratio:.3f}"])
    if layer_rows:
        keys = sorted({k for r in layer_rows for k in r}, key=lambda k: (k not in ("layer", "context"), k))
        with open(os.path.join(out_dir, "layers.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, keys)
            writer.writeheader()
            writer.writerows(layer_rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", default=",".join(FAMILIES) + ",layers",
                        help=f"comma list of {', '.join(FAMILIES)}, layers")
    parser.add_argument("--quick", action="store_true", help="fewer and smaller cases")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--contexts", help="layer cases: comma list of contexts (default 8K to 1M; quick: 8K, 32K)")
    parser.add_argument("--no-unfused-layer", action="store_true", help="skip the unfused PyTorch layer")
    parser.add_argument("--out", default="bench_results")
    args = parser.parse_args()
    wanted = args.ops.split(",")
    unknown = set(wanted) - set(FAMILIES) - {"layers"}
    if unknown:
        parser.error(f"unknown --ops {sorted(unknown)}; choose from {', '.join(FAMILIES)}, layers")
    torch.manual_seed(0)
    ceil = ceilings(DEV)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "ceilings": ceil}
    print(f"{meta['device']}: ceilings {ceil['tflops']:.0f} TFLOP/s bf16 matmul, {ceil['tbps']:.2f} TB/s copy",
          flush=True)
    cases = [c for name in wanted if name in FAMILIES for c in FAMILIES[name](args.quick)]
    results = []
    bar = Progress("ops", len(cases))
    for i, (op, case, flops, nbytes, ours, baselines, *context) in enumerate(cases):
        bar.update(i, f"{op} {case}")
        results.append(measure(op, case, flops, nbytes, ours, baselines, ceil, args.reps, *context))
        torch.cuda.empty_cache()
    bar.update(len(cases), "ops done")

    layer_rows = []
    if "layers" in wanted:
        contexts = ([int(c) for c in args.contexts.split(",")] if args.contexts
                    else [8192, 32768] if args.quick else layers.DEFAULT_CONTEXTS)
        bar = Progress("layers", 2 * len(contexts))
        for row in layers.layer_rows(contexts, unfused=not args.no_unfused_layer):
            layer_rows.append(row)
            bar.update(len(layer_rows), f"layer {row['layer']} context {row['context']}")
            write_tables(results, layer_rows, meta, args.out)  # keep what is done if a later case dies

    write_tables(results, layer_rows, meta, args.out)
    write_plots(results, layer_rows, args.out)
    print(f"{'op':<24}{'case':<42}{'ms':>10}{'TFLOP/s':>9}{'TB/s':>7}{'ceil':>7}  baseline/ours")
    for r in results:
        base = ", ".join(f"{n} {x:.2f}x" for n, x in r.baselines.items())
        print(f"{r.op:<24}{r.case:<42}{r.ms:>10.3f}{r.tflops:>9.1f}{r.tbps:>7.2f}{r.ceiling_fraction:>7.1%}  {base}")
    if layer_rows:
        print(f"\n{'layer':<7}{'context':>9}{'prefill s':>11}{'tok/s':>10}{'peak GiB':>10}{'dec ms B=1':>12}"
              f"{'dec ms B=64':>13}  unfused torch (prefill s; decode ms B=1, B=64)")
        for r in layer_rows:
            un = "; ".join(f"{r[k]:.3g}" for k in ("unfused_prefill_s", "unfused_decode_ms_b1", "unfused_decode_ms_b64")
                           if k in r)
            print(f"{r['layer']:<7}{r['context']:>9}{r['prefill_s']:>11.3f}{layers.tokens_per_s(r):>10,.0f}"
                  f"{r['prefill_peak_gib']:>10.2f}{r['decode_ms_b1']:>12.3f}{r['decode_ms_b64']:>13.3f}  {un}")


if __name__ == "__main__":
    main()
