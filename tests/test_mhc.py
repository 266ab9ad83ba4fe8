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
    (Rows: at most 2.7e-3 from 1 over 3,000 draws of 64 matrices; an unbalanced row is off by 0.1s.)"""
    a = ops.hc_sinkhorn(torch.randn(64, 4, 4, device=device), 20).cpu()
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
