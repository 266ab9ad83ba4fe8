"""Grouped GEMM (prefill and graph-replayed decode shapes) and the routed MoE block, against
F.grouped_mm and the same block on stock torch; the prefill shapes, whose experts all get the same
rows, also against cuBLAS's batched GEMM (torch.bmm: the same FLOPs and bytes as one strided
problem, with no per-expert pointers or descriptors)."""
import functools
import os

import torch
import torch.nn.functional as F

from cases import BF, DEV, replayed
from lcattn import ops


def contiguous_gemms(counts, N, K):
    """Makers of the same product, expert e taking counts[e] rows (x [sum counts, K], w [E, N, K]):
    lcattn's grouped GEMM and F.grouped_mm; each maker builds its own inputs."""
    E, M = counts.numel(), int(counts.sum())
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(torch.int32)
    def inputs():
        x = torch.randn(M, K, device=DEV, dtype=BF)
        return x, torch.randn(E, N, K, device=DEV, dtype=BF) * K ** -0.5, offsets.to(DEV)
    def ours():
        x, w, o = inputs()
        return lambda: ops.grouped_gemm_contiguous(x, w, o)
    def base():
        x, w, o = inputs()
        return lambda: F.grouped_mm(x, w.transpose(-2, -1), offs=o[1:])
    return {"lcattn": ours, "F.grouped_mm": base}


def uniform_gemms(E, per, N, K):
    """contiguous_gemms with E experts of `per` rows each, and torch.bmm of the same product."""
    def batched():
        x = torch.randn(E * per, K, device=DEV, dtype=BF)
        w = torch.randn(E, N, K, device=DEV, dtype=BF) * K ** -0.5
        return lambda: torch.bmm(x.view(E, per, K), w.transpose(-2, -1))
    return {**contiguous_gemms(torch.full((E,), per), N, K), "torch.bmm": batched}


def gemm_cases(quick):
    E, N, K = 256, 4096, 4096  # V4-Flash gate + up
    for per in (16, 64) if quick else (16, 64, 256):
        makers = uniform_gemms(E, per, N, K)
        ours = makers.pop("lcattn")
        flops = 2 * E * per * N * K
        yield "grouped_gemm_contiguous", f"E={E} rows/expert={per} N={N} K={K}", flops, 2 * E * N * K, ours, makers
    # A prefill chunk's tokens routed at random (6 distinct experts each): the experts' rows spread
    # around the mean (at a mean of 64, the largest about 90).
    for mean in () if quick else (64, 128):
        T = mean * E // 6
        counts = routed_counts(T, E, generator=torch.Generator().manual_seed(T))  # the same rows in every run
        makers = contiguous_gemms(counts, N, K)
        ours = makers.pop("lcattn")
        yield ("grouped_gemm_contiguous", f"E={E} routed T={T} k=6 (rows/expert {mean} on average, {int(counts.max())} "
               f"at most) N={N} K={K}", 2 * int(counts.sum()) * N * K, 2 * E * N * K, ours, makers)
    yield from decode_gemm_cases(quick)


def routed_counts(T, E, k=6, generator=None):
    """Rows per expert for T tokens, each routed to k distinct random experts of E: [E] int64 counts."""
    return torch.bincount(torch.rand(T, E, generator=generator).argsort(dim=1)[:, :k].flatten(), minlength=E)


def decode_routing(T, E, k=6):
    """Rows per group for T decode tokens: k distinct random experts of E per token, and all T rows
    on group E, the shared expert: [E + 1] int32 counts."""
    counts = torch.cat([routed_counts(T, E, k), torch.tensor([T])])
    return counts.to(torch.int32).to(DEV)


DECODE_DIMS = {"flash": (256, 2 * 2048, 4096), "pro": (384, 2 * 3072, 7168)}  # experts, 2 x expert dim, hidden


def decode_gemm_cases(quick):
    """Decode's gate + up GEMM: 1, 8, 64 tokens on 6 of 256 (Flash) / 384 (Pro) experts plus the shared
    expert as one more group, graph-replayed; the masked layout told the rows routed (expected_rows, as
    a caller knows tokens x experts per token). Bytes: the weights of the groups that get rows, plus x, y."""
    for model, (E, N, K) in DECODE_DIMS.items():
        for T in (1, 64) if quick else (1, 8, 64):
            counts = decode_routing(T, E)
            M, active = int(counts.sum()), int((counts > 0).sum())
            offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0).to(torch.int32)])
            w_bytes = 2 * active * N * K
            def weights(E=E, N=N, K=K):
                return torch.randn(E + 1, N, K, device=DEV, dtype=BF) * K ** -0.5
            def ours(M=M, K=K, offsets=offsets, weights=weights):
                x, w = torch.randn(M, K, device=DEV, dtype=BF), weights()
                return replayed(lambda: ops.grouped_gemm_contiguous(x, w, offsets))
            def masked(T=T, M=M, K=K, counts=counts, weights=weights):
                x, w = torch.randn(counts.numel(), T, K, device=DEV, dtype=BF), weights()
                return replayed(lambda: ops.grouped_gemm_masked(x, w, counts, expected_rows=M))
            def base(M=M, K=K, offsets=offsets, weights=weights):
                x, w = torch.randn(M, K, device=DEV, dtype=BF), weights()
                return replayed(lambda: F.grouped_mm(x, w.transpose(-2, -1), offs=offsets[1:]))
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
    for T in (1, 64) if quick else (1, 64, 2730, 8192):  # 2730: about 64 rows per expert
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
            return replayed(lambda: lcattn_moe_block(*args))
        def base(T=T):
            args = inputs(T)
            return replayed(lambda: torch_moe_block(*args))
        active = E * (1 - (1 - k / E) ** T)  # experts that get a token, expected under random routing
        flops = 2 * T * k * 3 * I * D
        nbytes = round(2 * 3 * I * D * active + 4 * E * D)
        for fused, label in (("0", ""), ("1", " fused SwiGLU")):
            yield ("moe_block", f"flash T={T} E={E} k={k}{label} (graph)", flops, nbytes,
                   functools.partial(ours, fused=fused), {"stock torch": base})
