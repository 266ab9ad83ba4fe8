"""Calls every lcattn op once and checks it against the pure-PyTorch reference; exits 1 if an op's
error exceeds its tolerance.

    python -m lcattn.example [--device cpu|cuda]

On a GPU the shapes are V4-Flash's (64 heads, head dim 512, top-k 512, 256 experts); on the CPU
they are scaled down so the run takes seconds.
"""
import argparse
import sys
import time

import torch

import lcattn
from lcattn import ops, reference
from lcattn.modules.rope import plain_inv_freq
from lcattn.testing import MODEL_SHAPES, rel_err

# Largest error that passes, as in the tests of the same op and dtype: relative error of fp32 outputs
# 1e-5 (routing weights 1e-6), of bf16 outputs 1e-2; indices, gathers and permutations must be exact.
TOLERANCES = {
    "compress_kv csa": 1e-5, "compress_kv hca": 1e-5, "indexer_scores": 1e-5, "topk_indices": 0.0,
    "indexer_topk": 0.0, "gather_rows": 0.0, "sparse_attn": 1e-2, "dense_attn": 1e-2, "moe_route": 1e-6,
    "moe_permute": 0.0, "grouped_gemm_contiguous": 1e-2, "grouped_gemm_masked": 1e-2, "moe_unpermute": 1e-2,
    "moe_experts": 2e-2, "hc_sinkhorn": 1e-5, "hc_post": 1e-2, "hc_collapse": 1e-2,
}


def shapes(device: torch.device) -> dict:
    if device.type == "cuda":
        return dict(MODEL_SHAPES["flash"], tokens=2048, context=8192, batch=4)
    return dict(hidden=256, heads=8, head_dim=128, rope_dim=64, window=128, index_heads=8, index_dim=64,
                index_topk=64, experts=16, experts_per_token=6, expert_dim=128, route_scale=1.5,
                tokens=64, context=1024, batch=2)


def run(device: torch.device) -> list:
    cfg = shapes(device)
    rows = []
    torch.manual_seed(0)
    bf = torch.bfloat16
    T, ctx, H, D, rd = cfg["tokens"], cfg["context"], cfg["heads"], cfg["head_dim"], cfg["rope_dim"]
    inv_freq = plain_inv_freq(160000.0, rd, device)

    def record(name, fn, check):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        rows.append((name, (time.perf_counter() - t0) * 1e3, check(out)))
        return out

    def i32(values):
        return torch.tensor(values, dtype=torch.int32, device=device)

    # Compressors of a CSA layer (ratio 4, overlapping) and an HCA layer (ratio 128).
    def compressor(name, ratio, overlap):
        width = (2 if overlap else 1) * D
        kv, score = torch.randn(1, ctx, width, device=device), torch.randn(1, ctx, width, device=device)
        ape, w = torch.randn(ratio, width, device=device), torch.ones(D, device=device)
        ring_kv, ring_score = ops.compress_state(1, ratio, width, overlap, device)
        out = torch.empty(1, ctx // ratio, D, device=device)
        record(name, lambda: ops.compress_kv(kv, score, i32([ctx]), i32([0]), ring_kv, ring_score, ape, w,
                                             inv_freq, out, ratio, overlap),
               lambda _: rel_err(out, reference.compress_kv(kv, score, ape, w, inv_freq, ratio, overlap)))

    compressor("compress_kv csa", 4, True)
    compressor("compress_kv hca", 128, False)

    # Lightning indexer on the last T query tokens of the context.
    HI, DI, K, N = cfg["index_heads"], cfg["index_dim"], cfg["index_topk"], ctx // 4
    q_start = torch.tensor([ctx - T], dtype=torch.int32, device=device)
    iq = torch.randn(1, T, HI, DI, device=device).to(bf)
    iw = torch.randn(1, T, HI, device=device) * (HI * DI) ** -0.5
    ik = torch.randn(1, N, DI, device=device).to(bf)
    scores = record("indexer_scores", lambda: ops.indexer_scores(iq, iw, ik, q_start),
                    lambda s: rel_err(s, reference.indexer_scores(iq, iw, ik, q_start)))
    record("topk_indices", lambda: ops.topk_indices(scores, K),
           lambda i: float(not torch.equal(i.sort(-1).values, reference.topk_indices(scores, K).sort(-1).values)))
    idx = record("indexer_topk", lambda: ops.indexer_topk(iq, iw, ik, q_start, K),
                 lambda i: float(not torch.equal(i, ops.topk_indices(scores, K))))

    # Sparse (CSA) and dense (HCA) attention over the window and the compressed entries.
    q = torch.randn(1, T, H, D, device=device).to(bf)
    kv = torch.randn(1, T + 127, D, device=device).to(bf)
    kv_start = q_start - 127
    ckv = torch.randn(1, N, D, device=device).to(bf)
    sink = torch.randn(H, device=device)
    record("gather_rows", lambda: ops.gather_rows(ckv, idx),
           lambda g: rel_err(g.float(), reference.gather_rows(ckv, idx).float()))
    ref_rows = slice(T - 16, T)  # the fp32 reference is memory-hungry: check the last rows
    a = lambda o, **kw: rel_err(o[0][:, ref_rows].float(), reference.attention(  # noqa: E731
        q[:, ref_rows], kv, kv_start, q_start + ref_rows.start, ckv, sink, inv_freq, **kw)[0])
    record("sparse_attn", lambda: ops.sparse_attn(q, kv, kv_start, q_start, ckv, idx, sink, inv_freq),
           lambda o: a(o, indices=idx[:, ref_rows]))
    hca = ckv[:, : ctx // 128].contiguous()
    record("dense_attn", lambda: ops.dense_attn(q, kv, kv_start, q_start, hca, sink, inv_freq, ratio=128),
           lambda o: rel_err(o[0][:, ref_rows].float(), reference.attention(
               q[:, ref_rows], kv, kv_start, q_start + ref_rows.start, hca, sink, inv_freq, ratio=128)[0]))

    # MoE: routing, permute, grouped GEMM (contiguous and masked), unpermute.
    E, k, hidden, inter = cfg["experts"], cfg["experts_per_token"], cfg["hidden"], cfg["expert_dim"]
    logits, bias = torch.randn(T, E, device=device), torch.randn(E, device=device) * 0.1
    weights, experts = record("moe_route", lambda: ops.moe_route(logits, k, cfg["route_scale"], bias=bias),
                              lambda r: rel_err(r[0].sort(-1).values, reference.moe_route(
                                  logits, k, cfg["route_scale"], bias=bias)[0].sort(-1).values))
    x = torch.randn(T, hidden, device=device).to(bf)
    x_perm, offsets, slot_rows = record("moe_permute", lambda: ops.moe_permute(x, experts, E),
                                        lambda r: float(not torch.equal(r[0], reference.moe_permute(x, experts, E)[0])))
    w_down = (torch.randn(E, hidden, inter, device=device) * inter ** -0.5).to(bf)
    w_up = (torch.randn(E, inter, hidden, device=device) * hidden ** -0.5).to(bf)
    h = record("grouped_gemm_contiguous", lambda: ops.grouped_gemm_contiguous(x_perm, w_up, offsets),
               lambda y: rel_err(y.float(), reference.grouped_gemm_contiguous(x_perm, w_up, offsets)))
    counts = torch.diff(offsets)
    masked = torch.zeros(E, int(counts.max()), inter, device=device, dtype=bf)
    for e in range(E):
        masked[e, : counts[e]] = h[offsets[e]:offsets[e + 1]]
    record("grouped_gemm_masked", lambda: ops.grouped_gemm_masked(masked, w_down, counts),
           lambda y: rel_err(y.float(), reference.grouped_gemm_masked(masked, w_down, counts)))
    y = ops.grouped_gemm_contiguous(h, w_down, offsets)
    record("moe_unpermute", lambda: ops.moe_unpermute(y, slot_rows, weights),
           lambda o: rel_err(o.float(), reference.moe_unpermute(y, slot_rows, weights)))
    w_gate_up = (torch.randn(E, 2 * inter, hidden, device=device) * hidden ** -0.5).to(bf)
    record("moe_experts", lambda: ops.moe_experts(x, weights, experts, w_gate_up, w_down, 10.0),
           lambda o: rel_err(o.float(), reference.moe_experts(x, weights, experts, w_gate_up, w_down, 10.0)))

    # mHC: the mixing matrices, a site's new streams and its sublayer input (4 streams a token).
    n = 4
    mix_logits = torch.randn(T, n, n, device=device) * 2
    comb = record("hc_sinkhorn", lambda: ops.hc_sinkhorn(mix_logits, 20),
                  lambda a: rel_err(a, reference.hc_sinkhorn(mix_logits, 20)))
    streams, out = torch.randn(T, n, hidden, device=device).to(bf), torch.randn(T, hidden, device=device).to(bf)
    post, pre = 2 * torch.sigmoid(torch.randn(T, n, device=device)), torch.sigmoid(torch.randn(T, n, device=device))
    record("hc_post", lambda: ops.hc_post(streams, out, post, comb),
           lambda y: rel_err(y.float(), reference.hc_post(streams, out, post, comb)))
    record("hc_collapse", lambda: ops.hc_collapse(streams, pre),
           lambda y: rel_err(y.float(), reference.hc_collapse(streams, pre)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = "cuda" if torch.cuda.is_available() and lcattn.cuda_kernels_built() else "cpu"
    parser.add_argument("--device", default=default, choices=["cpu", "cuda"])
    device = torch.device(parser.parse_args().device)
    print(f"lcattn example on {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}); "
          "first-call times include warm-up, they are not benchmarks")
    print(f"{'op':<26}{'ms':>10}{'error vs reference':>22}{'tolerance':>12}  result")
    failed = 0
    for name, ms, err in run(device):
        ok = err <= TOLERANCES[name]  # a NaN error fails
        failed += not ok
        print(f"{name:<26}{ms:>10.2f}{err:>22.2e}{TOLERANCES[name]:>12.0e}  {'PASS' if ok else 'FAIL'}")
    if failed:
        print(f"{failed} op(s) failed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
