"""Sparse and dense attention: prefill chunks at the V4 shapes and graph-replayed decode, against
unfused torch, FlexAttention and FlashMLA's sparse prefill where it loads."""
import os
import sys
from pathlib import Path

import torch

from cases import BF, DEV, replayed
from lcattn import ops
from lcattn.modules.rope import plain_inv_freq

ROOT = Path(__file__).resolve().parents[3]


def attention_inputs(B, S, H, K, N, pos, window=128, D=512, sparse=True):
    q = torch.randn(B, S, H, D, device=DEV, dtype=BF)
    kv = torch.randn(B, S + window - 1, D, device=DEV, dtype=BF)
    ckv = torch.randn(B, N, D, device=DEV, dtype=BF)
    q_start = torch.full((B,), pos, dtype=torch.int32, device=DEV)
    kv_start = q_start - (window - 1)
    sink = torch.randn(H, device=DEV)
    inv_freq = plain_inv_freq(160000.0, 64, DEV)
    idx = None
    if sparse:
        idx = torch.argsort(torch.rand(B * S, N, device=DEV), dim=1)[:, :K].to(torch.int32).view(B, S, K)
    return q, kv, kv_start, q_start, ckv, sink, inv_freq, idx


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
            return replayed(lambda: ops.sparse_attn(*a[:5], a[7], a[5], a[6]))
        def make_base(B=B, H=H, K=K, N=N):
            a = attention_inputs(B, 1, H, K, N, pos=4 * N - 1)
            return replayed(lambda: unfused_sparse(*a[:5], a[5], a[7]))
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
