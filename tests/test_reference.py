"""The references against the ops on edge cases where both define the result: NaN router logits, scale <= 0."""
import pytest
import torch

from lcattn import ops, reference
from lcattn.modules.rope import plain_inv_freq
from lcattn.testing import assert_close

NAN = float("nan")


@pytest.mark.parametrize("biased", [False, True])
def test_route_nan_logits(device, biased):
    T, E, k = 7, 16, 4
    # Logits on a grid of 0.5 and biases on one of 0.01, so that equal keys tie (and go to the lower
    # expert id) and different keys differ by at least 1.2e-4 (sqrt(softplus(x)) + bias over the grids):
    # the op's and the reference's roundings, an ulp apart, cannot order them differently.
    logits = torch.randint(-8, 8, (T, E)) * 0.5 if biased else torch.randint(-4, 4, (T, E)) * 0.5
    logits[0, logits[0].argmax()] = NAN  # the best expert's logit
    logits[1, ::3] = NAN
    logits[2] = NAN  # no number at all: experts 0..k-1, NaN weights
    logits[3, 1:] = NAN  # fewer numbers than k: the NaN experts fill up, so every weight is NaN
    bias = (torch.randint(-10, 11, (E,)) * 0.01).to(device) if biased else None
    logits = logits.to(device)
    w, idx = ops.moe_route(logits, k, 1.5, bias=bias)
    ref_w, ref_idx = reference.moe_route(logits, k, 1.5, bias=bias)
    assert torch.equal(idx.cpu(), ref_idx.cpu())
    assert_close(w, ref_w, 1e-6, "weights")
    assert idx[2].tolist() == list(range(k)) and w[2].isnan().all() and w[3].isnan().all()
    assert w[4:].isfinite().all()


def attention_inputs(device, B=2, S=5, H=3, D=64, rope_dim=16, L=20, N=9, K=4):
    # Sequence 1's queries sit at positions 0-4 and its window rows after them, with no index: no key at all
    # (dense with ratio 8 too).
    q = torch.randn(B, S, H, D, device=device).bfloat16()
    kv = torch.randn(B, L, D, device=device).bfloat16()
    ckv = torch.randn(B, N, D, device=device).bfloat16()
    sink = torch.randn(H, device=device)
    inv_freq = plain_inv_freq(10000.0, rope_dim, device)
    kv_start = torch.tensor([3, 5], dtype=torch.int32, device=device)
    q_start = torch.tensor([15, 0], dtype=torch.int32, device=device)
    idx = torch.randint(-1, N, (B, S, K), dtype=torch.int32, device=device)
    idx[1] = -1
    return q, kv, kv_start, q_start, ckv, sink, inv_freq, idx


@pytest.mark.parametrize("scale", [0.0, -0.125, -1.0])
def test_attention_scale_not_positive(device, scale):
    q, kv, kv_start, q_start, ckv, sink, f, idx = attention_inputs(device)
    out, lse = ops.sparse_attn(q, kv, kv_start, q_start, ckv, idx, sink, f, scale=scale, window=8)
    ref_out, ref_lse = reference.attention(q, kv, kv_start, q_start, ckv, sink, f, scale=scale, window=8,
                                           indices=idx)
    assert_close(out.float(), ref_out, 1e-2, "sparse out")
    assert_close(lse, ref_lse, 1e-4, "sparse lse")
    out, lse = ops.dense_attn(q, kv, kv_start, q_start, ckv, sink, f, ratio=8, scale=scale, window=8)
    ref_out, ref_lse = reference.attention(q, kv, kv_start, q_start, ckv, sink, f, scale=scale, window=8, ratio=8)
    assert_close(out.float(), ref_out, 1e-2, "dense out")
    assert_close(lse, ref_lse, 1e-4, "dense lse")
    assert (lse[1] == float("-inf")).all() and (out[1] == 0).all()
    if scale == 0:  # every key weighs the same: lse = log(number of keys)
        assert torch.isclose(lse[0], lse[0].exp().round().log()).all()
