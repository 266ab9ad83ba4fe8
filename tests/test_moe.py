"""Grouped GEMM, routing, permute and unpermute (SPEC 6) against the reference."""
import pytest
import torch

from lcattn import ops, reference
from lcattn.testing import MODEL_SHAPES, assert_close

GEMM_TOL = 1e-2  # bf16 output


def as_int(values, device):
    return torch.tensor(values, dtype=torch.int32, device=device)


@pytest.mark.parametrize("counts,N,K", [
    ([3, 0, 70, 1, 0, 129], 40, 24),  # experts with no rows; tiles spanning experts
    ([0, 0], 16, 8),                   # no rows at all
    ([5, 2, 9], 4096, 2048),           # V4-Flash down projection (N = hidden, K = expert dim)
])
def test_grouped_gemm_contiguous(device, counts, N, K):
    E, M = len(counts), sum(counts)
    x = torch.randn(M, K, device=device).bfloat16()
    w = (torch.randn(E, N, K, device=device) * K ** -0.5).bfloat16()
    offsets = as_int([0] + torch.tensor(counts).cumsum(0).tolist(), device)
    y = ops.grouped_gemm_contiguous(x, w, offsets)
    assert y.dtype == torch.bfloat16 and y.shape == (M, N)
    if M:
        assert_close(y.float(), reference.grouped_gemm_contiguous(x, w, offsets), GEMM_TOL)


@pytest.mark.parametrize("counts,M,N,K", [
    ([3, 0, 17, 20], 20, 33, 50),
    ([1, 2], 4, 2 * 2048, 4096),  # V4-Flash gate + up
    ([2, 0], 3, 2 * 3072, 7168),  # V4-Pro gate + up
])
def test_grouped_gemm_masked(device, counts, M, N, K):
    E = len(counts)
    x = torch.randn(E, M, K, device=device).bfloat16()
    w = (torch.randn(E, N, K, device=device) * K ** -0.5).bfloat16()
    c = as_int(counts, device)
    y = ops.grouped_gemm_masked(x, w, c)
    assert_close(y.float(), reference.grouped_gemm_masked(x, w, c), GEMM_TOL)
    assert (y[1, counts[1]:] == 0).all()


@pytest.mark.parametrize("model", ["flash", "pro"])
def test_route_biased(device, model):
    shape = MODEL_SHAPES[model]
    T, E, k = 37, shape["experts"], shape["experts_per_token"]
    logits = torch.randn(T, E, device=device) * 3
    bias = torch.randn(E, device=device) * 0.1
    w, idx = ops.moe_route(logits, k, shape["route_scale"], bias=bias)
    # Valid top-k by key (keys within 1e-5 of the boundary may go either way), weights from the picks.
    keys = (torch.nn.functional.softplus(logits.double()).sqrt() + bias.double()).cpu()
    picked = torch.zeros_like(keys, dtype=torch.bool).scatter_(1, idx.long().cpu(), True)
    assert (picked.sum(-1) == k).all(), "experts must be distinct"
    worst_picked = keys.masked_fill(~picked, float("inf")).amin(-1)
    best_left = keys.masked_fill(picked, -float("inf")).amax(-1)
    assert (worst_picked >= best_left - 1e-5).all()
    ref_w, _ = reference.moe_route(logits, k, shape["route_scale"], tid2eid=idx,
                                   token_ids=torch.arange(T, device=device))
    assert_close(w, ref_w, 1e-6, "weights")
    assert torch.allclose(w.sum(-1).cpu(), torch.full((T,), shape["route_scale"]), rtol=1e-5)


def test_route_hash_and_nan(device):
    T, E, k, V = 11, 16, 6, 50
    logits = torch.randn(T, E, device=device)
    tid2eid = torch.argsort(torch.rand(V, E), dim=1)[:, :k].to(torch.int32).to(device)
    token_ids = torch.randint(0, V, (T,), device=device)
    w, idx = ops.moe_route(logits, k, 1.5, tid2eid=tid2eid, token_ids=token_ids)
    ref_w, ref_idx = reference.moe_route(logits, k, 1.5, tid2eid=tid2eid, token_ids=token_ids)
    assert torch.equal(idx.cpu(), ref_idx.cpu())
    assert_close(w, ref_w, 1e-6, "weights")
    logits[0] = float("nan")
    _, idx = ops.moe_route(logits, k, 1.5, bias=torch.zeros(E, device=device))
    assert ((idx >= 0) & (idx < E)).all() and idx[0].unique().numel() == k, "NaN must still give valid experts"


@pytest.mark.parametrize("T,k,E,D", [(9, 3, 5, 24), (1, 6, 256, 4096), (0, 2, 4, 8), (40, 6, 64, 130)])
def test_permute_unpermute(device, T, k, E, D):
    x = torch.randn(T, D, device=device).bfloat16()
    idx = torch.argsort(torch.rand(T, E), dim=1)[:, :k].to(torch.int32).to(device)
    x_perm, offsets, rows = ops.moe_permute(x, idx, E)
    ref_perm, ref_offsets, ref_rows = reference.moe_permute(x, idx, E)
    assert torch.equal(x_perm.cpu(), ref_perm.cpu())
    assert torch.equal(offsets.cpu(), ref_offsets.cpu())
    assert torch.equal(rows.cpu(), ref_rows.cpu())
    weights = torch.rand(T, k, device=device)
    y = torch.randn(T * k, D, device=device).bfloat16()
    out = ops.moe_unpermute(y, rows, weights)
    if T:
        assert_close(out.float(), reference.moe_unpermute(y, rows, weights), 1e-2)
        assert_close(ops.moe_unpermute(y, rows).float(), reference.moe_unpermute(y, rows), 1e-2)


def test_moe_pipeline_matches_dense_loop(device):
    """route -> permute -> grouped GEMM -> unpermute equals a per-token loop over experts."""
    T, E, k, D, N = 13, 8, 2, 32, 24
    x = torch.randn(T, D, device=device).bfloat16()
    w = (torch.randn(E, N, D, device=device) * D ** -0.5).bfloat16()
    weights, idx = ops.moe_route(torch.randn(T, E, device=device), k, 1.0)
    x_perm, offsets, rows = ops.moe_permute(x, idx, E)
    out = ops.moe_unpermute(ops.grouped_gemm_contiguous(x_perm, w, offsets), rows, weights)
    ref = torch.stack([sum(weights[t, j] * (x[t].float() @ w[idx[t, j]].float().T) for j in range(k))
                       for t in range(T)])
    assert_close(out.float(), ref, 2e-2)


def test_bad_input_is_rejected(device):
    x = torch.randn(6, 8, device=device).bfloat16()
    w = torch.randn(2, 4, 8, device=device).bfloat16()
    with pytest.raises(RuntimeError, match=r"\[lcattn\] grouped_gemm_contiguous: offsets must be nondecreasing"):
        ops.grouped_gemm_contiguous(x, w, as_int([0, 7, 6], device))
    with pytest.raises(RuntimeError, match=r"offsets must start at 0 and end at M = 6, got 0 and 5"):
        ops.grouped_gemm_contiguous(x, w, as_int([0, 2, 5], device))
    with pytest.raises(RuntimeError, match=r"\[lcattn\] grouped_gemm_contiguous: w dim 2 must be 8"):
        ops.grouped_gemm_contiguous(x, w[..., :4].contiguous(), as_int([0, 2, 6], device))
    with pytest.raises(RuntimeError, match=r"\[lcattn\] grouped_gemm_masked: counts values must lie in \[0, 3\]"):
        ops.grouped_gemm_masked(x.view(2, 3, 8), w, as_int([1, 4], device))
    with pytest.raises(RuntimeError, match=r"\[lcattn\] moe_route: topk must lie in \[1, E = 4\]"):
        ops.moe_route(torch.randn(3, 4, device=device), 5, 1.0)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] moe_route: token_ids values must lie in \[0, 9\]"):
        ops.moe_route(torch.randn(3, 4, device=device), 2, 1.0, tid2eid=as_int([[0, 1]] * 10, device),
                      token_ids=torch.tensor([0, 10, 2], device=device))
    with pytest.raises(RuntimeError, match=r"\[lcattn\] moe_permute: indices values must lie in \[0, 3\]"):
        ops.moe_permute(x, as_int([[0], [1], [2], [3], [4], [0]], device), 4)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] moe_unpermute: rows values must lie in \[0, 5\]"):
        ops.moe_unpermute(x, as_int([[6]], device))
