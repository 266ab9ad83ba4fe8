"""Sparse and dense attention: prefill chunks at the V4 shapes and graph-replayed decode (entries in
bf16 and in the kv_fp8 form), against unfused torch, FlexAttention, lcattn's bf16 decode, and
FlashMLA's sparse prefill and fp8 sparse decode where they load."""
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


def load_flashmla_library() -> bool:
    """Loads the library scripts/build_flashmla.sh builds ($LCATTN_FLASHMLA_LIB, default
    build/baselines/flashmla_baseline.so): False if it does not load."""
    lib = os.environ.get("LCATTN_FLASHMLA_LIB", str(ROOT / "build/baselines/flashmla_baseline.so"))
    try:
        torch.ops.load_library(lib)
    except OSError:
        return False
    return True


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
        if not load_flashmla_library():
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


def kv_fp8_inputs(B, H, K, N, pos, window=128, S=1):
    """attention_inputs (one decode row per sequence by default) with the entries in the kv_fp8 form,
    ckv [B, N, 584] uint8 (quantized a sequence at a time to bound the fp32 temporaries)."""
    a = list(attention_inputs(B, S, H, K, N, pos, window))
    ckv8 = torch.empty(B, N, ops.kv_fp8_bytes(512, 64), dtype=torch.uint8, device=DEV)
    for b in range(B):
        ckv8[b] = ops.quantize_kv_fp8(a[4][b], 64)
    a[4] = ckv8
    return a


def dequantized(ckv8):
    """kv_fp8 entries [B, N, 584] -> the bf16 values [B, N, 512] they stand for, a sequence at a time."""
    out = torch.empty(*ckv8.shape[:2], 512, dtype=BF, device=ckv8.device)
    for b in range(ckv8.shape[0]):
        out[b] = ops.dequantize_kv_fp8(ckv8[b], 512, 64)
    return out


def kv_fp8_paged(x8, idx, page=64, order=None):
    """kv_fp8 entries x8 [B, N, 584] uint8 (SPEC 5.1) and indices idx [B, S, K] int32 into them
    (-1 = none) -> FlashMLA's MODEL1 paged cache [blocks, page, 1, 584] uint8 and the indices into
    it [B, S, K] int32 (block * page + row, -1 kept). A page holds its entries' first 576 bytes
    (448 e4m3 | 64 bf16 RoPE values) one after another, then their last 8 (7 UE8M0 scales | the
    zero byte): the same bytes regrouped. Entry i of sequence b is row i % page of logical block
    b * ceil(N / page) + i // page, which order [blocks] (default: in order) places, as a block table."""
    B, N, E = x8.shape
    per = -(-N // page)  # blocks per sequence; the last one padded with zero entries
    blocks = B * per
    if per * page != N:
        x8 = torch.nn.functional.pad(x8, (0, 0, 0, per * page - N))
    x8 = x8.reshape(blocks, page, E)
    order = torch.arange(blocks) if order is None else order.long()
    order = order.to(x8.device)
    # A block's bytes rounded up to a multiple of 576, as FlashMLA's own quantizer allocates them.
    stride = -(-page * E // 576) * 576
    cache = torch.zeros(blocks, stride, dtype=torch.uint8, device=x8.device)
    cache[order, :page * 576] = x8[..., :576].reshape(blocks, page * 576)
    cache[order, page * 576:page * E] = x8[..., 576:].reshape(blocks, page * (E - 576))
    i = idx.long().clamp_min(0)
    logical = torch.arange(B, device=idx.device)[:, None, None] * per + i // page
    remapped = order.to(idx.device)[logical] * page + i % page
    return cache[:, :page * E].view(blocks, page, 1, E), torch.where(idx >= 0, remapped, -1).int()


def window_indices(kv_start, q_start, S, L, window=128):
    """The window rows of kv [B, L, D] each query reads (SPEC 0.1) as indices [B, S, L rounded up to
    64] int32, -1 for the others (FlashMLA reads keys in blocks of 64)."""
    j = torch.arange(-(-L // 64) * 64, device=kv_start.device)
    pos = kv_start[:, None, None] + j  # [B, 1, L']: the position of row j
    p = q_start[:, None, None] + torch.arange(S, device=kv_start.device)[:, None]  # [B, S, 1]
    seen = (j < L) & (pos >= 0) & (pos <= p) & (pos > p - window)
    return torch.where(seen, j, -1).int()


def flash_mla_decode(source: str):
    """FlashMLA's sparse fp8 decode (V4's MODEL1 cache, 64 heads) from `source`: "package" (flash_mla)
    or "library" (what scripts/build_flashmla.sh builds); None if it does not load. Returns
    prepare(attention inputs with kv_fp8 entries) -> a call of its kernels alone. FlashMLA reads every
    key from a paged fp8 cache by index and has no window of its own: the window rows, quantized to
    kv_fp8, go in its main cache with their indices (K = 128), the entries in its extra cache (K2 =
    top-k), as in FlashMLA's own V4 test configurations. The split schedule depends on the shapes
    only and is made once."""
    if source == "package":
        try:
            import flash_mla
        except ImportError:
            return None
        def schedule(q, topk, extra_topk):
            return flash_mla.get_mla_metadata()[0]  # filled by the first call
        def kernel(q, cache, idx, sink, extra, extra_idx, scale, sched):
            return flash_mla.flash_mla_with_kvcache(q, cache, None, None, 512, sched, None, scale, False, True, idx,
                                                    sink, extra, extra_idx)[0]
    else:
        if not load_flashmla_library() or not hasattr(torch.ops.flashmla_baseline, "sparse_decode"):
            return None
        def schedule(q, topk, extra_topk):
            return torch.ops.flashmla_baseline.sparse_decode_schedule(q, topk, extra_topk)
        def kernel(q, cache, idx, sink, extra, extra_idx, scale, sched):
            return torch.ops.flashmla_baseline.sparse_decode(q, cache, idx, sink, extra, extra_idx, scale, *sched)
    def prepare(q, kv, kv_start, q_start, ckv8, sink, idx, window=128):
        B, S, H, D = q.shape
        win = window_indices(kv_start, q_start, S, kv.shape[1], window)
        cache, win_idx = kv_fp8_paged(ops.quantize_kv_fp8(kv, 64), win)
        idx = torch.nn.functional.pad(idx, (0, -idx.shape[-1] % 64), value=-1)  # K a multiple of 64
        extra, extra_idx = kv_fp8_paged(ckv8, idx)
        sched = schedule(q, win_idx.shape[-1], extra_idx.shape[-1])
        return lambda: kernel(q, cache, win_idx, sink, extra, extra_idx, D ** -0.5, sched)
    return prepare


def flash_mla_decode_agrees(prepare) -> bool:
    """Same result as lcattn's sparse_attn on a small kv_fp8 decode case where both read the same
    values (lcattn's window rows quantized to kv_fp8 and back, as FlashMLA stores them), so only
    rounding differs; the dims before the RoPE ones, which FlashMLA leaves rotated."""
    a = kv_fp8_inputs(2, 64, 512, 4096, pos=4 * 4096 - 1)
    a[1] = ops.dequantize_kv_fp8(ops.quantize_kv_fp8(a[1], 64), 512, 64)
    ours = ops.sparse_attn(*a[:5], a[7], a[5], a[6])[0][..., :448].float()
    try:
        theirs = prepare(*a[:6], a[7])()[..., :448].float()
    except Exception as err:  # any failure (an older flash_mla, a bad launch) leaves the baseline out
        print(f"FlashMLA's fp8 decode failed on a small case: {err}", file=sys.stderr)
        return False
    return torch.allclose(ours, theirs, atol=2e-2, rtol=2e-2)


def sparse_attn_cases(quick):
    # Entries of a 128K context (32 MB of keys, near the L2 size) with uniformly random picks, and of a
    # 16K context (4 MB, L2-resident): the gather's cost depends on where the picked rows live.
    shapes = [("flash", 4096, 64, 512, 32768), ("pro", 4096, 128, 1024, 32768)]
    if not quick:
        # ("flash", 4096, 64, 128, ...): 4 key blocks a CTA against 10, to split a CTA's time into a fixed
        # part and a part per block.
        shapes = [("flash", 4096, 64, 512, 32768), ("flash", 4096, 64, 128, 32768), ("flash", 16384, 64, 512, 32768),
                  ("flash", 65536, 64, 512, 32768), ("flash", 16384, 64, 512, 4096), ("pro", 4096, 128, 1024, 32768),
                  ("pro", 16384, 128, 1024, 32768), ("pro", 16384, 128, 1024, 4096)]
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
    # A prefill chunk with the entries in the kv_fp8 form, against lcattn on the dequantized entries.
    S, H, K, N = 4096, 64, 512, 32768
    def make_fp8_prefill(dequantize):
        a = kv_fp8_inputs(1, H, K, N, pos=4 * N - S, S=S)
        if dequantize:
            a[4] = dequantized(a[4])
        return lambda: ops.sparse_attn(*a[:5], a[7], a[5], a[6])
    yield ("sparse_attn", f"flash prefill S={S} H={H} keys={K}+128 N={N} kv_fp8", 4 * H * 512 * (K + 128) * S,
           2 * (2 * S * H * 512 + S * 128 * 512) + S * K * ops.kv_fp8_bytes(512, 64),
           lambda: make_fp8_prefill(False), {"lcattn bf16": lambda: make_fp8_prefill(True)})
    # Decode as a serving loop runs it: captured in a CUDA graph (no host checks), ours and the baseline.
    for B in (1, 32, 64, 128):
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
    # B = 64 with top-k 128: 4 key blocks a CTA against 10, a CTA's fixed time against its time a block.
    B, H, K, N = 64, 64, 128, 32768
    def make_few(B=B, H=H, K=K, N=N):
        a = attention_inputs(B, 1, H, K, N, pos=4 * N - 1)
        return replayed(lambda: ops.sparse_attn(*a[:5], a[7], a[5], a[6]))
    yield ("sparse_attn", f"flash decode B={B} keys={K}+128 (graph)", 4 * H * 512 * (K + 128) * B,
           2 * B * (K + 128) * 512, make_few, {})
    # The same decode with the entries in the kv_fp8 form, against lcattn's bf16 decode of the
    # dequantized entries and FlashMLA's fp8 decode.
    # The flash_mla package if it has V4's decode and agrees with lcattn, else the built library.
    fp8_decode = None
    for source in ("package", "library"):
        candidate = flash_mla_decode(source)
        if candidate is not None and flash_mla_decode_agrees(candidate):
            fp8_decode = candidate
            break
        if candidate is not None:
            print(f"FlashMLA's fp8 decode ({source}) left out: it does not match lcattn's sparse_attn on a small case",
                  file=sys.stderr)
    for B in (1, 32, 64, 128):
        H, K, N = 64, 512, 32768
        def make_bf16(B=B, H=H, K=K, N=N):
            a = kv_fp8_inputs(B, H, K, N, pos=4 * N - 1)
            a[4] = dequantized(a[4])
            return replayed(lambda: ops.sparse_attn(*a[:5], a[7], a[5], a[6]))
        def make_flash_mla(B=B, H=H, K=K, N=N):
            a = kv_fp8_inputs(B, H, K, N, pos=4 * N - 1)
            return replayed(fp8_decode(*a[:6], a[7]))
        baselines = {"lcattn bf16": make_bf16}
        if fp8_decode is not None:
            baselines["FlashMLA fp8"] = make_flash_mla
        flops = 4 * H * 512 * (K + 128) * B
        nbytes = B * (K * ops.kv_fp8_bytes(512, 64) + 128 * 2 * 512)  # picked entries in kv_fp8, bf16 window rows
        def make(B=B, H=H, K=K, N=N):
            a = kv_fp8_inputs(B, H, K, N, pos=4 * N - 1)
            return replayed(lambda: ops.sparse_attn(*a[:5], a[7], a[5], a[6]))
        yield "sparse_attn", f"flash decode B={B} keys={K}+128 kv_fp8 (graph)", flops, nbytes, make, baselines


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
