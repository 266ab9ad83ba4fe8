"""Typed Python wrappers of torch.ops.lcattn.*, each beside its fake (meta) kernel.

A wrapper takes the arguments of its op's schema (csrc/torch/registration.cpp) in the same order,
with the same defaults, and forwards them unchanged: `ops.f(*args)` and `torch.ops.lcattn.f(*args)`
are the same call. The ops are for inference: they have no backward, and a call with an input that
requires grad (under grad mode) raises an `[lcattn]` error.

Layout (docs/SPEC.md section 0): batches are padded. A query or new-token tensor is [B, S, ...];
row s of sequence b sits at absolute position q_start[b] + s (start_pos for the compressor). Raw
window keys are [B, L, D] with row j at position kv_start[b] + j. Compressed entries are [B, N, D]
with entry i at row i (or [B, N, bytes] uint8 in the kv_fp8 form, :func:`quantize_kv_fp8`).
Index tensors are int32 with -1 for "none"; lengths and positions are int32.
"""
import functools
import inspect
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

_ops = torch.ops.lcattn


def _fake(op: str) -> Callable:
    """Registers the decorated function as op's fake kernel. A fake kernel is also the op's Meta
    kernel, which dispatch prefers to the CPU and CUDA ones: a call that mixes a meta tensor with
    others lands here, so the tensors' devices are checked here as the adapters check them (SPEC
    0.2), rather than empty tensors returned in place of a result."""
    def register(fn: Callable) -> Callable:
        names = list(inspect.signature(fn).parameters)

        @functools.wraps(fn)
        def checked(*args, **kwargs):
            tensors = [(n, a) for n, a in [*zip(names, args), *kwargs.items()] if isinstance(a, Tensor)]
            for name, t in tensors[1:]:
                if t.device != tensors[0][1].device:
                    raise RuntimeError(f"[lcattn] {op}: {name} must be on {tensors[0][1].device}, got {t.device}")
            return fn(*args, **kwargs)
        torch.library.register_fake(f"lcattn::{op}")(checked)
        return fn
    return register


def _check_range(op: str, name: str, v: int, lo: int, hi: int) -> None:
    """A fake kernel's check of an integer argument that sizes its outputs, as the adapter's."""
    if not lo <= v <= hi:
        raise RuntimeError(f"[lcattn] {op}: {name} must lie in [{lo}, {hi}], got {v}")


def compress_kv(kv: Tensor, score: Tensor, seq_lens: Tensor, start_pos: Tensor, ring_kv: Tensor,
                ring_score: Tensor, ape: Tensor, norm_weight: Tensor, inv_freq: Tensor, out: Tensor,
                ratio: int, overlap: bool, eps: float = 1e-6, out_scales: Optional[Tensor] = None) -> None:
    """Block KV compressor (SPEC 3) over one chunk of new tokens per sequence, in place.

    kv, score: [B, S, width] fp32 projections a_s and z_s (without ape) of the chunk's tokens;
    width = 2c with overlap (CSA, ratio 4) else c (HCA). seq_lens [B]: valid rows of the chunk.
    start_pos [B]: position of row 0. ring_kv, ring_score: [B, coff * ratio, width] fp32 carry-over
    rows, updated (start a sequence from :func:`compress_state`). ape [ratio, width], norm_weight
    [c], inv_freq [rope_dim / 2] fp32. out [B, N, c] (fp32, bf16, or float8_e4m3fn with out_scales
    [B, N] fp32: entry i quantized as :func:`quantize_e4m3` does, its scale at out_scales[b, i]), or
    uint8 [B, N, kv_fp8_bytes(c, rope_dim)] (the kv_fp8 form, as :func:`quantize_kv_fp8` makes it;
    c even; on CUDA 16-byte aligned):
    every entry i completed by the chunk is written at out[b, i] (entries i >= N are skipped).
    Chunked calls write the same entries as one call over the whole sequence.
    """
    _ops.compress_kv(kv, score, seq_lens, start_pos, ring_kv, ring_score, ape, norm_weight, inv_freq, out,
                     ratio, overlap, eps, out_scales)


@_fake("compress_kv")
def _(kv, score, seq_lens, start_pos, ring_kv, ring_score, ape, norm_weight, inv_freq, out, ratio, overlap,
      eps=1e-6, out_scales=None):
    return None


def compress_state(batch: int, ratio: int, width: int, overlap: bool,
                   device: Optional[torch.device] = None) -> Tuple[Tensor, Tensor]:
    """Empty carry-over rings (ring_kv, ring_score) for :func:`compress_kv`."""
    if batch < 0 or ratio < 1 or width < 0:
        raise ValueError(f"[lcattn] compress_state: batch and width must be at least 0 and ratio at least 1, got "
                         f"batch {batch}, ratio {ratio}, width {width}")
    if overlap and width % 2:
        raise ValueError(f"[lcattn] compress_state: width must be even when overlap (compress_kv's kv width), "
                         f"got {width}")
    shape = (batch, (2 if overlap else 1) * ratio, width)
    return (torch.zeros(shape, dtype=torch.float32, device=device),
            torch.zeros(shape, dtype=torch.float32, device=device))


E4M3_MAX = 448.0


def quantize_e4m3(x: Tensor, min_amax: float = 1e-4) -> Tuple[Tensor, Tensor]:
    """x [..., D] -> (float8_e4m3fn [..., D], fp32 scales [...]): per row s = max(amax, min_amax) / 448
    and x / s rounded to nearest; x = s * result up to e4m3 rounding. The rule DeepSeek's fp8
    indexer uses for its q (per token and head) and keys (per entry); compress_kv applies the same
    one when it writes e4m3 entries. Plain torch ops (capturable, compilable)."""
    if not x.is_floating_point() or x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"[lcattn] quantize_e4m3: x must be a floating-point tensor [..., D] with D >= 1, got "
                         f"{x.dtype} {tuple(x.shape)}")
    if not 0 < min_amax < float("inf"):
        raise ValueError(f"[lcattn] quantize_e4m3: min_amax must be finite and above 0, got {min_amax}")
    amax = x.float().abs().amax(dim=-1).clamp_min(min_amax)
    # A tensor divisor: torch divides a CUDA tensor by a Python number as a product with its
    # reciprocal, which is not the correctly rounded quotient the kernels compute.
    scales = amax / torch.full_like(amax, E4M3_MAX)
    q = (x.float() / scales[..., None]).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return q, scales


KV_FP8_TILE = 64


def kv_fp8_bytes(head_dim: int, rope_dim: int) -> int:
    """Bytes of one compressed attention entry in the kv_fp8 form (584 for V4's 512 and 64)."""
    _check_kv_fp8_dims("kv_fp8_bytes", head_dim, rope_dim)
    nope = head_dim - rope_dim
    return (nope + 2 * rope_dim + -(-nope // KV_FP8_TILE) + 7) // 8 * 8


def _check_kv_fp8_dims(op: str, head_dim: int, rope_dim: int) -> None:
    if not (0 <= rope_dim <= head_dim and head_dim % 2 == 0 and rope_dim % 2 == 0):
        raise ValueError(f"[lcattn] {op}: head dim and rope_dim must be even with 0 <= rope_dim <= head dim, got "
                         f"head dim {head_dim}, rope_dim {rope_dim}")


def quantize_kv_fp8(x: Tensor, rope_dim: int) -> Tensor:
    """Compressed attention entries x [..., D] (fp32 or bf16) -> their kv_fp8 form, uint8
    [..., kv_fp8_bytes(D, rope_dim)], the bytes of an entry of FlashMLA's fp8 cache for V4 (SPEC 5.1): the
    first D - rope_dim channels as e4m3 in tiles of 64, each divided by the smallest power of two
    at least max(amax / 448, 1e-4) and that power's UE8M0 byte kept; the RoPE channels as bf16.
    A tile holding NaN or infinity is stored as NaN. compress_kv writes the same bytes itself.
    Plain torch ops."""
    if not x.is_floating_point() or x.dim() == 0:
        raise ValueError(f"[lcattn] quantize_kv_fp8: x must be a floating-point tensor [..., D], got {x.dtype} "
                         f"{tuple(x.shape)}")
    D = x.shape[-1]
    _check_kv_fp8_dims("quantize_kv_fp8", D, rope_dim)
    nope = D - rope_dim
    tiles = -(-nope // KV_FP8_TILE)
    xf = x.float()
    tiled = torch.nn.functional.pad(xf[..., :nope], (0, tiles * KV_FP8_TILE - nope)).unflatten(-1, (tiles, KV_FP8_TILE))
    amax = tiled.abs().amax(dim=-1)
    mantissa, exponent = torch.frexp((amax / torch.full_like(amax, E4M3_MAX)).clamp_min(1e-4))
    exponent = exponent - (mantissa == 0.5).int()  # log2 rounded up: a power of two is its own scale
    finite = amax.isfinite()
    byte = torch.where(finite, exponent + 127, 255)  # in [114, 247] when finite
    scale = torch.where(finite, (byte.clamp_max(254) << 23).view(torch.float32), float("nan"))  # 2^(byte-127), exact
    out = torch.zeros(*x.shape[:-1], kv_fp8_bytes(D, rope_dim), dtype=torch.uint8, device=x.device)
    values = (tiled / scale[..., None]).to(torch.float8_e4m3fn).flatten(-2)[..., :nope]
    out[..., :nope] = values.view(torch.uint8)
    out[..., nope:nope + 2 * rope_dim] = x[..., nope:].to(torch.bfloat16).contiguous().view(torch.uint8)
    out[..., nope + 2 * rope_dim:nope + 2 * rope_dim + tiles] = byte.to(torch.uint8)
    return out


def dequantize_kv_fp8(x: Tensor, head_dim: int, rope_dim: int) -> Tensor:
    """The kv_fp8 form x [..., kv_fp8_bytes(head_dim, rope_dim)] uint8 -> bf16 [..., head_dim]: each
    e4m3 value times its tile's 2^(byte - 127) (exact in bf16), then the RoPE channels."""
    _check_kv_fp8_dims("dequantize_kv_fp8", head_dim, rope_dim)
    nope = head_dim - rope_dim
    tiles = -(-nope // KV_FP8_TILE)
    if x.dtype != torch.uint8 or x.shape[-1] != kv_fp8_bytes(head_dim, rope_dim):
        raise ValueError(f"[lcattn] dequantize_kv_fp8: x must be uint8 [..., {kv_fp8_bytes(head_dim, rope_dim)}], "
                         f"got {x.dtype} {tuple(x.shape)}")
    x = x.contiguous()
    scales = x[..., nope + 2 * rope_dim:nope + 2 * rope_dim + tiles].view(torch.float8_e8m0fnu).float()
    values = x[..., :nope].view(torch.float8_e4m3fn).float() * scales.repeat_interleave(KV_FP8_TILE, -1)[..., :nope]
    rope = x[..., nope:nope + 2 * rope_dim].contiguous().view(torch.bfloat16)
    return torch.cat([values.to(torch.bfloat16), rope], dim=-1)


def indexer_scores(q: Tensor, weights: Tensor, keys: Tensor, q_start: Tensor, ratio: int = 4,
                   key_scales: Optional[Tensor] = None) -> Tensor:
    """Lightning indexer scores (SPEC 4): [B, S, N] fp32, -inf where entry i >= (p + 1) // ratio.

    q [B, S, HI, DI] bf16 (rotated), weights [B, S, HI] fp32 (scales folded in), keys [B, N, DI]
    bf16, q_start [B] int32. fp8 form: q and keys float8_e4m3fn (q's scales folded into weights)
    and key_scales [B, N] fp32, which multiplies entry i's score after the head sum.
    """
    return _ops.indexer_scores(q, weights, keys, q_start, ratio, key_scales)


@_fake("indexer_scores")
def _(q, weights, keys, q_start, ratio=4, key_scales=None):
    return q.new_empty((q.shape[0], q.shape[1], keys.shape[1]), dtype=torch.float32)


def topk_indices(scores: Tensor, k: int) -> Tensor:
    """Per row of scores [..., N] fp32: the min(k, candidates) best indices in ascending order,
    then -1; int32 [..., k]. -inf and NaN scores are never picked; ties go either way."""
    return _ops.topk_indices(scores, k)


@_fake("topk_indices")
def _(scores, k):
    _check_range("topk_indices", "k", k, 0, 65536)
    return scores.new_empty((*scores.shape[:-1], k), dtype=torch.int32)


def indexer_topk(q: Tensor, weights: Tensor, keys: Tensor, q_start: Tensor, k: int, ratio: int = 4,
                 block_rows: int = 0, key_scales: Optional[Tensor] = None) -> Tensor:
    """Indexer scoring and top-k (SPEC 4) -> [B, S, k] int32, as topk_indices(indexer_scores(...)).

    Scores block_rows query rows at a time (0: as many as fit in 256 MiB), so memory is
    O(block_rows * N) rather than O(S * N). key_scales: the fp8 form, as in indexer_scores.
    """
    return _ops.indexer_topk(q, weights, keys, q_start, k, ratio, block_rows, key_scales)


@_fake("indexer_topk")
def _(q, weights, keys, q_start, k, ratio=4, block_rows=0, key_scales=None):
    _check_range("indexer_topk", "k", k, 0, 65536)
    return q.new_empty((q.shape[0], q.shape[1], k), dtype=torch.int32)


def gather_rows(pool: Tensor, indices: Tensor) -> Tensor:
    """pool [B, N, D], indices [B, S, K] int32 in [-1, N) -> [B, S, K, D]; -1 gives zeros."""
    return _ops.gather_rows(pool, indices)


@_fake("gather_rows")
def _(pool, indices):
    return pool.new_empty((*indices.shape, pool.shape[-1]))


def sparse_attn(q: Tensor, kv: Tensor, kv_start: Tensor, q_start: Tensor, ckv: Tensor, indices: Tensor,
                sink: Tensor, inv_freq: Tensor, scale: Optional[float] = None,
                window: int = 128) -> Tuple[Tensor, Tensor]:
    """Attention over the raw window plus selected compressed entries plus a sink (SPEC 5).

    q [B, S, H, D] bf16; kv [B, L, D] bf16 raw keys (= values); ckv [B, N, D] bf16 entries (or uint8
    [B, N, kv_fp8_bytes(D, rope_dim)] in the kv_fp8 form, SPEC 5.1);
    indices [B, S, K] int32 into ckv (-1 = none); sink [H] fp32; inv_freq [rope_dim / 2] undoes
    the query rotation on the output's last rope_dim channels. Returns out [B, S, H, D] bf16 and
    the log-sum-exp [B, S, H] fp32 of the scaled logits without the sink. scale defaults to D^-0.5.
    """
    return _ops.sparse_attn(q, kv, kv_start, q_start, ckv, indices, sink, inv_freq, scale, window)


def _attention_fake(q):
    return torch.empty_like(q), q.new_empty(q.shape[:-1], dtype=torch.float32)


@_fake("sparse_attn")
def _(q, kv, kv_start, q_start, ckv, indices, sink, inv_freq, scale=None, window=128):
    return _attention_fake(q)


def dense_attn(q: Tensor, kv: Tensor, kv_start: Tensor, q_start: Tensor, ckv: Tensor, sink: Tensor,
               inv_freq: Tensor, ratio: int, scale: Optional[float] = None,
               window: int = 128) -> Tuple[Tensor, Tensor]:
    """As :func:`sparse_attn`, with every visible entry i < (p + 1) // ratio of ckv; ratio 0 is
    window-only attention."""
    return _ops.dense_attn(q, kv, kv_start, q_start, ckv, sink, inv_freq, ratio, scale, window)


@_fake("dense_attn")
def _(q, kv, kv_start, q_start, ckv, sink, inv_freq, ratio, scale=None, window=128):
    return _attention_fake(q)


def grouped_gemm_contiguous(x: Tensor, w: Tensor, offsets: Tensor) -> Tensor:
    """x [M, K] bf16, w [E, N, K] bf16, offsets [E + 1] int32 -> y [M, N] bf16 with
    y[r] = x[r] w[e]^T for offsets[e] <= r < offsets[e + 1]; fp32 accumulate."""
    return _ops.grouped_gemm_contiguous(x, w, offsets)


@_fake("grouped_gemm_contiguous")
def _(x, w, offsets):
    return x.new_empty((x.shape[0], w.shape[1]))


def grouped_gemm_masked(x: Tensor, w: Tensor, counts: Tensor, expected_rows: int = 0) -> Tensor:
    """x [E, M, K] bf16, w [E, N, K] bf16, counts [E] int32 -> y [E, M, N] bf16; rows at or past
    counts[e] are zero. expected_rows in [0, E M]: the sum of counts the caller expects (at decode,
    tokens x experts per token), which lets the CUDA kernel size its grid as for the contiguous
    layout; 0 if unknown. A hint only: the result is the same for any value."""
    return _ops.grouped_gemm_masked(x, w, counts, expected_rows)


@_fake("grouped_gemm_masked")
def _(x, w, counts, expected_rows=0):
    return x.new_empty((x.shape[0], x.shape[1], w.shape[1]))


def moe_route(logits: Tensor, k: int, route_scale: float, bias: Optional[Tensor] = None,
              tid2eid: Optional[Tensor] = None, token_ids: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """MoE routing (SPEC 6) of logits [T, E] fp32: (weights [T, k] fp32, experts [T, k] int32).

    Scores s = sqrt(softplus(logits)); experts are the top-k of s + bias, best first (the lower id
    wins a tie), or tid2eid[token_ids] for hash-routed layers (tid2eid [V, k] int32, token_ids [T]
    int64). weights = s[experts] / sum(s[experts]) * route_scale.
    """
    return _ops.moe_route(logits, k, route_scale, bias, tid2eid, token_ids)


@_fake("moe_route")
def _(logits, k, route_scale, bias=None, tid2eid=None, token_ids=None):
    shape = (logits.shape[0], k)
    return logits.new_empty(shape), logits.new_empty(shape, dtype=torch.int32)


def moe_permute(x: Tensor, indices: Tensor, num_experts: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Expert-contiguous copy of token rows for :func:`grouped_gemm_contiguous`.

    x [T, D] bf16, indices [T, k] int32 experts -> x_perm [T * k, D] (by expert, then by slot
    t * k + j), offsets [E + 1] int32, rows [T, k] int32 (row of x_perm holding slot (t, j)).
    """
    return _ops.moe_permute(x, indices, num_experts)


@_fake("moe_permute")
def _(x, indices, num_experts):
    _check_range("moe_permute", "num_experts", num_experts, 1, 65536)
    return (x.new_empty((indices.shape[0] * indices.shape[1], x.shape[1])),
            x.new_empty((num_experts + 1,), dtype=torch.int32),
            x.new_empty(indices.shape, dtype=torch.int32))


def moe_unpermute(y: Tensor, rows: Tensor, weights: Optional[Tensor] = None) -> Tensor:
    """out[t] = sum_j weights[t, j] * y[rows[t, j]] in fp32 -> [T, D] bf16 (weights default 1)."""
    return _ops.moe_unpermute(y, rows, weights)


@_fake("moe_unpermute")
def _(y, rows, weights=None):
    return y.new_empty((rows.shape[0], y.shape[1]))


def moe_experts(x: Tensor, weights: Optional[Tensor], indices: Tensor, w_gate_up: Tensor, w_down: Tensor,
                swiglu_limit: float) -> Tensor:
    """The routed experts of a MoE block (SPEC 6) -> [T, D] bf16:
    out[t] = sum_j weights[t, j] * down_e(swiglu(gate_up_e(x[t]))) with e = indices[t, j].

    x [T, D] bf16, weights [T, k] fp32 (None: 1), indices [T, k] int32 in [0, E), w_gate_up
    [E, 2I, D] bf16 with gate and up rows interleaved in blocks of 8 (`interleave_gate_up` of the
    checkpoint's gate-rows-first tensor), w_down [E, D, I] bf16; D and I multiples of 8.
    swiglu(g, u) = silu(min(g, limit)) * clamp(u, -limit, limit) on the gate and up products
    (rounded to bf16 first, or in fp32 in the gate+up GEMM's epilogue with LCATTN_MOE_FUSED_SWIGLU=1).
    """
    return _ops.moe_experts(x, weights, indices, w_gate_up, w_down, swiglu_limit)


@_fake("moe_experts")
def _(x, weights, indices, w_gate_up, w_down, swiglu_limit):
    return torch.empty_like(x)


def hc_sinkhorn(logits: Tensor, iters: int, eps: float = 1e-6) -> Tensor:
    """The mHC mixing matrices (SPEC 7): logits [..., n, n] fp32 (1 <= n <= 8) -> A [..., n, n] fp32,
    A = softmax over each row + eps, columns normalised, then iters - 1 rounds of rows then columns
    (each divided by its sum + eps). One kernel, where torch ops take 2 * iters."""
    return _ops.hc_sinkhorn(logits, iters, eps)


@_fake("hc_sinkhorn")
def _(logits, iters, eps=1e-6):
    return torch.empty_like(logits)


def hc_post(streams: Tensor, out: Tensor, post: Tensor, comb: Tensor) -> Tensor:
    """An mHC site's new residual streams (SPEC 7): streams X [..., n, D] and the sublayer's output
    [..., D] (bf16 or fp32, the same), post [..., n] and comb [..., n, n] fp32 -> y [..., n, D] in the
    streams' type, y_j = post_j * out + sum_i comb_ij X_i summed in fp32. One pass over the streams."""
    return _ops.hc_post(streams, out, post, comb)


@_fake("hc_post")
def _(streams, out, post, comb):
    return torch.empty_like(streams)


def hc_collapse(streams: Tensor, pre: Tensor) -> Tensor:
    """An mHC sublayer's input (SPEC 7): streams X [..., n, D] (bf16 or fp32) and pre [..., n] fp32 ->
    h [..., D] in the streams' type, h = sum_i pre_i X_i summed in fp32. One pass over the streams."""
    return _ops.hc_collapse(streams, pre)


@_fake("hc_collapse")
def _(streams, pre):
    return streams.new_empty(streams.shape[:-2] + streams.shape[-1:])


def _regroup_gate_up(w: Tensor, name: str, interleave: bool) -> Tensor:
    """w [..., 2I, D] as [..., 2, I / 8, 8, D] (gate rows, then up rows) <-> [..., I / 8, 2, 8, D]
    (blocks of 8 gate rows, each followed by their 8 up rows)."""
    if w.dim() < 2:
        raise ValueError(f"[lcattn] {name}: w must be [..., 2I, D], got shape {tuple(w.shape)}")
    *lead, rows, cols = w.shape
    if rows % 16:
        raise ValueError(f"[lcattn] {name}: 2I must be a multiple of 16, got {rows}")
    groups = (2, rows // 16) if interleave else (rows // 16, 2)
    return w.reshape(*lead, *groups, 8, cols).transpose(-4, -3).reshape(w.shape).contiguous()


def interleave_gate_up(w: Tensor) -> Tensor:
    """[..., 2I, D] gate rows then up rows -> the layout moe_experts reads: rows 16b .. 16b + 7 are gate
    features 8b .. 8b + 7 and the next 8 rows their up features, so the gate+up GEMM's epilogue finds each
    gate beside its up (I a multiple of 8). A copy; do it once, when loading weights."""
    return _regroup_gate_up(w, "interleave_gate_up", interleave=True)


def deinterleave_gate_up(w: Tensor) -> Tensor:
    """The inverse of :func:`interleave_gate_up`: [..., 2I, D] gate rows then up rows (the checkpoint's layout)."""
    return _regroup_gate_up(w, "deinterleave_gate_up", interleave=False)
