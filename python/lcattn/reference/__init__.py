"""Pure-PyTorch oracles of every lcattn op, written for clarity from SPEC.md, math in fp32.

Same argument conventions as :mod:`lcattn.ops`, except that the compressor reference works on a
whole sequence at once (positions 0..T-1), which is what chunked calls must reproduce.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def rope(x: Tensor, pos: Tensor, inv_freq: Tensor, sign: float = 1.0) -> Tensor:
    """Rotates interleaved pairs (x[2k], x[2k+1]) of the last dim by pos * inv_freq[k] (SPEC 1).

    x [..., 2 * len(inv_freq)], pos broadcastable to x.shape[:-1]; sign -1 undoes the rotation.
    """
    angle = pos.to(torch.float32)[..., None] * inv_freq.to(torch.float32)
    cos, sin = torch.cos(angle), sign * torch.sin(angle)
    x0, x1 = x[..., 0::2].float(), x[..., 1::2].float()
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


def rms_norm(x: Tensor, weight: Optional[Tensor], eps: float = 1e-6) -> Tensor:
    x = x.float()
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y if weight is None else y * weight.float()


def compress_kv(kv: Tensor, score: Tensor, ape: Tensor, norm_weight: Tensor, inv_freq: Tensor, ratio: int,
                overlap: bool, eps: float = 1e-6) -> Tensor:
    """Entries of a whole sequence (SPEC 3): kv, score [B, T, width] -> [B, T // ratio, c] fp32."""
    B, T, width = kv.shape
    m, nb = ratio, T // ratio
    c = width // 2 if overlap else width
    a = kv[:, : nb * m].float().view(B, nb, m, width)
    z = score[:, : nb * m].float().view(B, nb, m, width) + ape.float()
    if overlap:
        # Entry i: A halves of block i-1 (absent for i = 0) and B halves of block i.
        prev_a = F.pad(a[:, :-1, :, :c], (0, 0, 0, 0, 1, 0))
        prev_z = F.pad(z[:, :-1, :, :c], (0, 0, 0, 0, 1, 0), value=float("-inf"))
        a = torch.cat((prev_a, a[..., c:]), dim=2)
        z = torch.cat((prev_z, z[..., c:]), dim=2)
    pooled = (torch.softmax(z, dim=2) * a).sum(dim=2)
    out = rms_norm(pooled, norm_weight, eps)
    rd = 2 * inv_freq.numel()
    if rd:
        pos = torch.arange(nb, device=kv.device) * m
        out = torch.cat((out[..., : c - rd], rope(out[..., c - rd:], pos, inv_freq)), dim=-1)
    return out


def _positions(q_start: Tensor, S: int) -> Tensor:
    return q_start.long()[:, None] + torch.arange(S, device=q_start.device)  # [B, S]


def indexer_scores(q: Tensor, weights: Tensor, keys: Tensor, q_start: Tensor, ratio: int = 4,
                   key_scales: Optional[Tensor] = None) -> Tensor:
    """SPEC 4: I[b, s, i] = c_i sum_j w_j ReLU(q_j . k_i) for visible i, else -inf; c_i = key_scales[b, i]
    (1 without them; q and keys may then be float8_e4m3fn)."""
    dots = torch.einsum("bshd,bnd->bshn", q.float(), keys.float()).relu()
    scores = torch.einsum("bsh,bshn->bsn", weights.float(), dots)
    if key_scales is not None:
        scores = scores * key_scales.float()[:, None, :]
    visible = (_positions(q_start, q.shape[1]) + 1) // ratio  # [B, S]
    i = torch.arange(keys.shape[1], device=q.device)
    return scores.masked_fill(i >= visible[..., None], float("-inf"))


def topk_indices(scores: Tensor, k: int) -> Tensor:
    """min(k, candidates) best indices per row in ascending order, then -1 (SPEC 4)."""
    N = scores.shape[-1]
    s = scores.float().nan_to_num(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    kk = min(k, N)
    vals, idx = torch.topk(s, kk, dim=-1) if kk else (s[..., :0], s[..., :0].long())
    idx = torch.where(vals == float("-inf"), N, idx).sort(dim=-1).values
    idx = torch.where(idx == N, -1, idx)
    pad = idx.new_full((*idx.shape[:-1], k - kk), -1)
    return torch.cat((idx, pad), dim=-1).to(torch.int32)


def gather_rows(pool: Tensor, indices: Tensor) -> Tensor:
    B, S, K = indices.shape
    idx = indices.long().clamp(min=0).view(B, S * K)
    rows = torch.gather(pool, 1, idx[..., None].expand(-1, -1, pool.shape[-1])).view(B, S, K, -1)
    return rows.masked_fill((indices < 0)[..., None], 0)


def attention(q: Tensor, kv: Tensor, kv_start: Tensor, q_start: Tensor, ckv: Tensor, sink: Tensor,
              inv_freq: Tensor, scale: Optional[float] = None, window: int = 128,
              indices: Optional[Tensor] = None, ratio: int = 0) -> Tuple[Tensor, Tensor]:
    """SPEC 5 in fp32: window keys, then ckv[indices] (sparse) or visible ckv (dense, ratio > 0).

    Returns out [B, S, H, D] fp32 and lse [B, S, H] fp32.
    """
    B, S, H, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    qf = q.float() * scale  # scaled before the masks: -inf * scale is NaN at scale 0 and +inf below
    pos = _positions(q_start, S)  # [B, S]
    kv_pos = kv_start.long()[:, None] + torch.arange(kv.shape[1], device=q.device)  # [B, L]
    # SPEC 5's window: positions max(0, p - window + 1) .. p; rows before position 0 hold nothing.
    win_ok = ((kv_pos[:, None, :] <= pos[..., None]) & (kv_pos[:, None, :] > pos[..., None] - window)
              & (kv_pos[:, None, :] >= 0))  # [B, S, L]
    logits = [torch.einsum("bshd,bld->bshl", qf, kv.float()).masked_fill(~win_ok[:, :, None], float("-inf"))]
    values = [kv.float()[:, None].expand(B, S, -1, D)]  # [B, S, L, D]
    if indices is not None:
        picked = gather_rows(ckv.float(), indices)  # [B, S, K, D]
        logits.append(torch.einsum("bshd,bskd->bshk", qf, picked).masked_fill((indices < 0)[:, :, None],
                                                                                 float("-inf")))
        values.append(picked)
    elif ratio > 0:
        visible = (pos + 1) // ratio
        i = torch.arange(ckv.shape[1], device=q.device)
        logits.append(torch.einsum("bshd,bnd->bshn", qf, ckv.float()).masked_fill(
            (i >= visible[..., None])[:, :, None], float("-inf")))
        values.append(ckv.float()[:, None].expand(B, S, -1, D))
    l = torch.cat(logits, dim=-1)  # [B, S, H, U]
    v = torch.cat(values, dim=2)  # [B, S, U, D]
    mx = l.amax(dim=-1, keepdim=True)
    mx = torch.where(mx == float("-inf"), 0.0, mx)  # a query with no key at all: output 0, lse -inf
    e = torch.exp(l - mx)
    total = e.sum(dim=-1, keepdim=True)
    out = torch.einsum("bshu,bsud->bshd", e, v) / (total + torch.exp(sink.float()[:, None] - mx))
    out = torch.where(total == 0, 0.0, out)  # no key: 0, whatever the sink (-inf gives 0 / 0 above); NaN stays
    rd = 2 * inv_freq.numel()
    if rd:
        out = torch.cat((out[..., : D - rd], rope(out[..., D - rd:], pos[..., None], inv_freq, -1.0)), dim=-1)
    lse = (mx + torch.log(total)).squeeze(-1)
    return out, lse


def grouped_gemm_contiguous(x: Tensor, w: Tensor, offsets: Tensor) -> Tensor:
    y = x.new_zeros((x.shape[0], w.shape[1]), dtype=torch.float32)
    for e in range(w.shape[0]):
        lo, hi = int(offsets[e]), int(offsets[e + 1])
        y[lo:hi] = x[lo:hi].float() @ w[e].float().T
    return y


def grouped_gemm_masked(x: Tensor, w: Tensor, counts: Tensor) -> Tensor:
    y = torch.einsum("emk,enk->emn", x.float(), w.float())
    rows = torch.arange(x.shape[1], device=x.device)
    return y.masked_fill((rows[None] >= counts.to(x.device)[:, None])[..., None], 0.0)


def moe_route(logits: Tensor, k: int, route_scale: float, bias: Optional[Tensor] = None,
              tid2eid: Optional[Tensor] = None, token_ids: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """SPEC 6: s = sqrt(softplus(u)); top-k of s + bias (or the hash table); normalised weights.

    Experts come best first, a tie to the lower id; a NaN key counts as -inf, so a row of NaN logits
    still gets k distinct experts (with NaN weights).
    """
    s = F.softplus(logits.float()).sqrt()
    if tid2eid is not None:
        indices = tid2eid[token_ids.long()].long()
    else:
        key = s if bias is None else s + bias.float()
        key = key.masked_fill(key.isnan(), float("-inf"))
        indices = torch.sort(key, dim=-1, descending=True, stable=True).indices[:, :k]
    weights = s.gather(1, indices)
    return weights / weights.sum(-1, keepdim=True) * route_scale, indices.to(torch.int32)


def moe_permute(x: Tensor, indices: Tensor, num_experts: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Stable by expert, then by slot t * k + j."""
    flat = indices.reshape(-1).long()
    order = torch.sort(flat, stable=True).indices
    rows = torch.empty_like(order)
    rows[order] = torch.arange(order.numel(), device=x.device)
    counts = torch.bincount(flat, minlength=num_experts)
    offsets = F.pad(counts.cumsum(0), (1, 0))
    x_perm = x[order // indices.shape[1]]
    return x_perm, offsets.to(torch.int32), rows.view(indices.shape).to(torch.int32)


def moe_unpermute(y: Tensor, rows: Tensor, weights: Optional[Tensor] = None) -> Tensor:
    picked = y.float()[rows.long()]  # [T, k, D]
    weights = torch.ones(rows.shape, device=y.device) if weights is None else weights.float()
    return (picked * weights[..., None]).sum(1)


def swiglu(gate: Tensor, up: Tensor, limit: float) -> Tensor:
    """SPEC 6's clamped SwiGLU: silu(min(gate, limit)) * clamp(up, -limit, limit), in fp32."""
    return F.silu(gate.float().clamp(max=limit)) * up.float().clamp(-limit, limit)


def moe_experts(x: Tensor, weights: Optional[Tensor], indices: Tensor, w_gate_up: Tensor, w_down: Tensor,
                swiglu_limit: float) -> Tensor:
    """sum_j weights[t, j] * down_e(swiglu(gate_up_e(x[t]))), e = indices[t, j], all in fp32; w_gate_up
    [E, 2I, D] with gate and up rows interleaved in blocks of 8, as the op takes it."""
    T, k = indices.shape
    E, I, D = w_gate_up.shape[0], w_gate_up.shape[1] // 2, w_gate_up.shape[2]
    blocks = w_gate_up.float().view(E, I // 8, 2, 8, D)  # [E, block, gate | up, 8, D]
    w_gate, w_up = blocks[:, :, 0].reshape(E, I, D), blocks[:, :, 1].reshape(E, I, D)
    out = torch.zeros(T, w_down.shape[1], device=x.device)
    weights = torch.ones(T, k, device=x.device) if weights is None else weights.float()
    for e in indices.unique().tolist():
        t, j = (indices == e).nonzero(as_tuple=True)
        gate, up = x[t].float() @ w_gate[e].T, x[t].float() @ w_up[e].T
        out.index_add_(0, t, (swiglu(gate, up, swiglu_limit) @ w_down[e].float().T) * weights[t, j, None])
    return out


def hc_sinkhorn(logits: Tensor, iters: int, eps: float = 1e-6) -> Tensor:
    """SPEC 7's mixing matrix: softmax over each row + eps, then columns, then iters - 1 times rows
    and columns, each divided by its sum + eps; in fp32."""
    a = torch.softmax(logits.float(), dim=-1) + eps
    a = a / (a.sum(dim=-2, keepdim=True) + eps)
    for _ in range(iters - 1):
        a = a / (a.sum(dim=-1, keepdim=True) + eps)
        a = a / (a.sum(dim=-2, keepdim=True) + eps)
    return a


def hc_post(streams: Tensor, out: Tensor, post: Tensor, comb: Tensor) -> Tensor:
    """SPEC 7's new streams y_j = post_j * out + sum_i comb_ij X_i, in fp32."""
    return post.float().unsqueeze(-1) * out.float().unsqueeze(-2) + comb.float().transpose(-1, -2) @ streams.float()


def hc_collapse(streams: Tensor, pre: Tensor) -> Tensor:
    """SPEC 7's sublayer input h = sum_i pre_i X_i, in fp32."""
    return (pre.float().unsqueeze(-1) * streams.float()).sum(-2)
