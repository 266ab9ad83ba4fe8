"""The mHC mixing matrices (SPEC 7) against the reference."""
import pytest
import torch

from lcattn import ops, reference
from lcattn.testing import assert_close


@pytest.mark.parametrize("shape,iters", [
    ((5, 4, 4), 20),        # V4: 4 streams, 20 iterations
    ((2, 3, 4, 4), 20),     # [B, S, n, n]
    ((300, 4, 4), 1),       # softmax and one column normalisation only
    ((7, 1, 1), 5),         # one stream
    ((3, 8, 8), 7),         # the widest n
    ((2, 5, 5), 20),        # an n without a V4 model
    ((0, 4, 4), 20),        # no tokens
])
def test_hc_sinkhorn_matches_reference(device, shape, iters):
    logits = torch.randn(shape, device=device) * 3
    out = ops.hc_sinkhorn(logits, iters, 1e-6)
    assert out.shape == logits.shape and out.dtype == torch.float32
    assert_close(out, reference.hc_sinkhorn(logits, iters, 1e-6), 1e-5, "sinkhorn")


def test_hc_sinkhorn_is_doubly_stochastic(device):
    """After 20 rounds the columns of A sum to 1 and the rows about 1; logits of 100s do not overflow.
    (Rows: at most 2.7e-3 from 1 over 3,000 draws of 64 matrices; an unbalanced row is off by 0.1s.
    Nearly decomposable draws converge slowly, about 1 matrix in 10^7 past 1e-2: fixed logits.)"""
    fixed = torch.Generator().manual_seed(0)
    a = ops.hc_sinkhorn(torch.randn(64, 4, 4, generator=fixed).to(device), 20).cpu()
    assert torch.allclose(a.sum(-2), torch.ones(64, 4), atol=1e-5)
    assert torch.allclose(a.sum(-1), torch.ones(64, 4), atol=2e-2)
    big = ops.hc_sinkhorn(torch.randn(64, 4, 4, device=device) * 100, 20).cpu()
    assert torch.isfinite(big).all() and (big > 0).all()
    assert torch.allclose(big.sum(-2), torch.ones(64, 4), atol=1e-5)


def test_hc_sinkhorn_rejects_bad_input(device):
    good = torch.randn(3, 4, 4, device=device)
    for bad, match in [(torch.randn(3, 4, 5, device=device), r"\[lcattn\] hc_sinkhorn: logits must be"),
                       (torch.randn(2, 9, 9, device=device), "n must lie in"),
                       (torch.randn(4, device=device), "logits must be"),
                       (good.double(), "logits must be Float"),
                       (good.transpose(-1, -2), "must be contiguous")]:
        with pytest.raises(RuntimeError, match=match):
            ops.hc_sinkhorn(bad, 20)
    for iters in (0, 65537, 2**32 + 1):  # not truncated to 1
        with pytest.raises(RuntimeError, match=r"iters must lie in \[1, 65536\]"):
            ops.hc_sinkhorn(good, iters)
    for eps in (float("nan"), -0.5):
        with pytest.raises(RuntimeError, match="eps must be finite and at least 0"):
            ops.hc_sinkhorn(good, 20, eps)



def hc_mix_inputs(shape, dtype, device):
    """streams [..., n, D], out [..., D], post [..., n] in (0, 2), comb [..., n, n] doubly stochastic,
    pre [..., n] in (0, 1)."""
    *lead, n, D = shape
    streams = torch.randn(shape, device=device).to(dtype)
    out = torch.randn(*lead, D, device=device).to(dtype)
    post = 2 * torch.sigmoid(torch.randn(*lead, n, device=device))
    comb = ops.hc_sinkhorn(torch.randn(*lead, n, n, device=device) * 2, 20)
    pre = torch.sigmoid(torch.randn(*lead, n, device=device)) + 1e-6
    return streams, out, post, comb, pre


def hc_post_and_collapse(streams, out, post, comb, pre):
    return ops.hc_post(streams, out, post, comb), ops.hc_collapse(streams, pre)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [
    (5, 4, 64),           # 4 streams
    (2, 3, 4, 4096),      # [B, S, n, D] at V4-Flash's hidden size
    (1, 4, 7168),         # V4-Pro's
    (7, 1, 40),           # one stream
    (3, 8, 24),           # the widest n
    (2, 5, 13),           # an odd D: element by element
    (3, 4, 4100),         # D % 8 = 4: bf16 element by element, fp32 in 16-byte vectors
    (300, 4, 8),          # more tokens than threads in a block, D under one vector per thread
    (0, 4, 64),           # no tokens
])
def test_hc_post_and_collapse_match_reference(device, shape, dtype):
    streams, out, post, comb, pre = hc_mix_inputs(shape, dtype, device)
    y, h = hc_post_and_collapse(streams, out, post, comb, pre)
    assert y.shape == streams.shape and y.dtype == dtype and y.device == streams.device
    assert h.shape == out.shape and h.dtype == dtype and h.device == streams.device
    # one rounding of an fp32 sum: half a bf16 ulp, or fp32 sums in another order
    tol = 4e-3 if dtype == torch.bfloat16 else 1e-6
    assert_close(y, reference.hc_post(streams, out, post, comb), tol, "hc_post")
    assert_close(h, reference.hc_collapse(streams, pre), tol, "hc_collapse")


def test_hc_mix_off_16_byte_boundary(device):
    """Streams that start 2 bytes into their storage take the element path and give the same values."""
    streams, out, post, comb, pre = hc_mix_inputs((6, 4, 64), torch.bfloat16, device)
    shifted = torch.empty(streams.numel() + 1, device=device, dtype=streams.dtype)[1:].view(streams.shape)
    shifted.copy_(streams)
    for a, b in zip(hc_post_and_collapse(shifted, out, post, comb, pre),
                    hc_post_and_collapse(streams, out, post, comb, pre)):
        assert torch.equal(a, b)


def test_hc_mix_nan_stays_in_its_element(device):
    """A NaN in stream i at element d reaches every sum at d (0 * NaN is NaN) and no other element."""
    streams, out, post, comb, pre = hc_mix_inputs((3, 4, 256), torch.bfloat16, device)
    streams[1, 2, 100] = float("nan")
    y, h = (t.cpu() for t in hc_post_and_collapse(streams, out, post, comb, pre))
    nan = torch.zeros(y.shape, dtype=torch.bool)
    nan[1, :, 100] = True
    assert torch.equal(torch.isnan(y), nan) and torch.equal(torch.isnan(h), nan[:, 0])


def test_hc_mix_rejects_bad_input(device):
    streams, out, post, comb, pre = hc_mix_inputs((3, 4, 16), torch.bfloat16, device)
    for args, match in [
        ((streams.half(), out.half(), post, comb), "streams must be BFloat16 or Float"),
        ((streams.float(), out, post, comb), "out must be Float"),
        ((streams, out, post.double(), comb), "post must be Float"),
        ((streams, out[:2], post, comb), r"out must have shape \[3, 16\]"),
        ((streams, out, post[:, :3], comb), r"post must have shape \[3, 4\]"),
        ((streams, out, post, comb[:, :, :2]), r"comb must have shape \[3, 4, 4\]"),
        ((streams.transpose(0, 1).contiguous().transpose(0, 1), out, post, comb), "streams must be contiguous"),
        ((streams.new_zeros(3, 9, 16), out, post, comb), r"n must lie in \[1, 8\]"),
        ((streams[0, 0], out, post, comb), r"streams must be \[\.\.\., n, D\]"),
    ]:
        with pytest.raises(RuntimeError, match=r"\[lcattn\] hc_post: " + match):
            ops.hc_post(*args)
    for args, match in [
        ((streams.half(), pre), "streams must be BFloat16 or Float"),
        ((streams, pre.bfloat16()), "pre must be Float"),
        ((streams, pre[:, :3]), r"pre must have shape \[3, 4\]"),
        ((streams, pre.t().contiguous().t()), "pre must be contiguous"),
    ]:
        with pytest.raises(RuntimeError, match=r"\[lcattn\] hc_collapse: " + match):
            ops.hc_collapse(*args)
    if device.type == "cuda":
        with pytest.raises(RuntimeError, match="post must be on cuda"):
            ops.hc_post(streams, out, post.cpu(), comb)
        with pytest.raises(RuntimeError, match="pre must be on cuda"):
            ops.hc_collapse(streams, pre.cpu())
