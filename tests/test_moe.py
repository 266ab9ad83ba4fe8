"""Grouped GEMM, routing, permute and unpermute (SPEC 6) against the reference."""
import os

import pytest
import torch

from lcattn import ops, reference
from lcattn.testing import MODEL_SHAPES, assert_close, assert_within_bf16_error
from lcattn.testing.bench import capture

GEMM_TOL = 1e-2  # bf16 output


def as_int(values, device):
    return torch.tensor(values, dtype=torch.int32, device=device)


def offsets_of(counts, device):
    return as_int([0] + torch.tensor(counts).cumsum(0).tolist(), device)


def random_counts(E, total):
    """E nonnegative row counts that add up to total, some of them 0."""
    return torch.bincount(torch.randint(0, E, (total,)) * (torch.rand(total) < 0.9), minlength=E).tolist()


def expert_weights(E, N, K, device):
    return (torch.randn(E, N, K, device=device) * K ** -0.5).bfloat16()


def bf16_grouped_gemm(x, w, offsets):
    """The contiguous grouped GEMM in bf16 torch matmuls (the error a fast kernel is judged by)."""
    y = x.new_zeros((x.shape[0], w.shape[1]))
    for e in range(w.shape[0]):
        lo, hi = int(offsets[e]), int(offsets[e + 1])
        y[lo:hi] = x[lo:hi] @ w[e].T
    return y


# Rows per expert (the tile heuristic follows their mean: 32, 64, 128 and 256-row tiles), E from 1
# to 384, empty experts, one expert with every row, V4-Flash and V4-Pro dims.
@pytest.mark.parametrize("counts,N,K", [
    ([3, 0, 70, 1, 0, 129], 40, 24),           # experts with no rows; rows not multiples of a tile
    ([0, 1, 7, 129, 300], 64, 32),
    ([300], 136, 72),                          # E = 1
    ([0, 0, 257], 64, 64),                     # every row on one expert
    ([0, 0], 16, 8),                           # no rows at all
    (("random", 256), 64, 48),                 # E = 256, ~16 rows each
    (("random", 384), 40, 16),                 # E = 384
    ([5, 2, 9], 4096, 2048),                   # V4-Flash down projection (N = hidden, K = expert dim)
    ([1, 0, 6], 2 * 3072, 7168),               # V4-Pro gate + up
])
def test_grouped_gemm_contiguous(device, counts, N, K):
    if isinstance(counts, tuple):
        counts = random_counts(counts[1], 16 * counts[1])
    E, M = len(counts), sum(counts)
    x = torch.randn(M, K, device=device).bfloat16()
    w = expert_weights(E, N, K, device)
    offsets = offsets_of(counts, device)
    y = ops.grouped_gemm_contiguous(x, w, offsets)
    assert y.dtype == torch.bfloat16 and y.shape == (M, N)
    if M:
        ref = reference.grouped_gemm_contiguous(x, w, offsets)
        assert_close(y.float(), ref, GEMM_TOL)
        assert_within_bf16_error(y, ref, bf16_grouped_gemm(x, w, offsets))


@pytest.mark.parametrize("counts,M,N,K", [
    ([3, 0, 17, 20], 20, 32, 48),
    ([0, 64, 1, 63], 64, 64, 24),
    ([129, 0, 7], 129, 40, 64),
    ([300, 1, 0], 300, 24, 16),
    ([1, 2], 4, 2 * 2048, 4096),  # V4-Flash gate + up
    ([2, 0], 3, 2 * 3072, 7168),  # V4-Pro gate + up
])
def test_grouped_gemm_masked(device, counts, M, N, K):
    E = len(counts)
    x = torch.randn(E, M, K, device=device).bfloat16()
    w = expert_weights(E, N, K, device)
    c = as_int(counts, device)
    y = ops.grouped_gemm_masked(x, w, c)
    ref = reference.grouped_gemm_masked(x, w, c)
    assert_close(y.float(), ref, GEMM_TOL)
    past_count = (torch.arange(M, device=device)[None] >= c[:, None])[..., None]
    assert_within_bf16_error(y, ref, torch.einsum("emk,enk->emn", x, w).masked_fill(past_count, 0))
    for e, n in enumerate(counts):
        assert (y[e, n:] == 0).all()
    for hint in (sum(counts), 1, E * M):  # the expected rows size the CUDA grid only
        assert torch.equal(ops.grouped_gemm_masked(x, w, c, expected_rows=hint), y), hint


def test_grouped_gemm_empty_input(device):
    w0 = torch.empty(3, 16, 0, device=device).bfloat16()  # K = 0: y is zero
    y = ops.grouped_gemm_contiguous(torch.empty(5, 0, device=device).bfloat16(), w0, as_int([0, 2, 2, 5], device))
    assert y.shape == (5, 16) and (y == 0).all()
    y = ops.grouped_gemm_masked(torch.empty(3, 2, 0, device=device).bfloat16(), w0, as_int([1, 0, 2], device))
    assert y.shape == (3, 2, 16) and (y == 0).all()
    w = expert_weights(3, 16, 8, device)
    y = ops.grouped_gemm_contiguous(torch.empty(0, 8, device=device).bfloat16(), w, as_int([0, 0, 0, 0], device))
    assert y.shape == (0, 16)
    assert ops.grouped_gemm_masked(torch.empty(3, 0, 8, device=device).bfloat16(), w,
                                   as_int([0, 0, 0], device)).shape == (3, 0, 16)


@pytest.mark.cuda
def test_grouped_gemm_is_repeatable_cuda():
    counts = random_counts(64, 64 * 40)
    x = torch.randn(sum(counts), 256, device="cuda").bfloat16()
    w, offsets = expert_weights(64, 512, 256, "cuda"), offsets_of(counts, "cuda")
    first = ops.grouped_gemm_contiguous(x, w, offsets)
    for _ in range(3):
        assert torch.equal(ops.grouped_gemm_contiguous(x, w, offsets), first)


@pytest.mark.cuda
@pytest.mark.skipif(os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING") == "1",
                    reason="graph capture allocates through the caching allocator")
def test_grouped_gemm_replays_in_cuda_graph_cuda():
    """Captured once, replayed with new rows per expert: the problems are read on the device."""
    E, M, N, K = 16, 96, 256, 128
    x, w = torch.randn(M, K, device="cuda").bfloat16(), expert_weights(E, N, K, "cuda")
    xm = torch.randn(E, M // 4, K, device="cuda").bfloat16()
    offsets, counts = offsets_of(random_counts(E, M), "cuda"), as_int([M // 4] * E, "cuda")
    graph, (y, ym) = capture(lambda: (ops.grouped_gemm_contiguous(x, w, offsets),
                                      ops.grouped_gemm_masked(xm, w, counts)))
    for _ in range(3):
        offsets.copy_(offsets_of(random_counts(E, M), "cuda"))
        counts.copy_(torch.randint(0, M // 4 + 1, (E,), dtype=torch.int32))
        x.copy_(torch.randn_like(x, dtype=torch.float32))
        graph.replay()
        assert_close(y.float(), reference.grouped_gemm_contiguous(x, w, offsets), GEMM_TOL)
        assert_close(ym.float(), reference.grouped_gemm_masked(xm, w, counts), GEMM_TOL)


@pytest.mark.cuda
@pytest.mark.parametrize("tile", ["n32", "n64", "n128", "n256"])
@pytest.mark.parametrize("raster", ["n", "m"])
def test_grouped_gemm_each_tile_cuda(monkeypatch, tile, raster):
    """Each CUTLASS tile forced (LCATTN_GROUPED_GEMM_TILE) on irregular shapes in both layouts, and in
    moe_experts with the gated epilogue, whatever the heuristic would pick for them; in either raster
    order (LCATTN_GROUPED_GEMM_RASTER: the experts' row tiles first, the default, or the features)."""
    monkeypatch.setenv("LCATTN_GROUPED_GEMM_TILE", tile)
    monkeypatch.setenv("LCATTN_GROUPED_GEMM_RASTER", raster)
    for counts, N, K in (([3, 0, 70, 1, 0, 9], 40, 24), ([1, 2, 0, 12], 4096, 2048), ([0] * 9 + [1] * 7, 136, 520)):
        x = torch.randn(sum(counts), K, device="cuda").bfloat16()
        w, offsets = expert_weights(len(counts), N, K, "cuda"), offsets_of(counts, "cuda")
        # fp32 references only: cuBLAS's bf16 kernels trip compute-sanitizer racecheck.
        assert_close(ops.grouped_gemm_contiguous(x, w, offsets).float(),
                     reference.grouped_gemm_contiguous(x, w, offsets), GEMM_TOL)
    for counts, M, N, K in (([3, 0, 9, 1], 9, 264, 72), ([0, 1, 1, 0, 0, 1, 1, 0, 1], 1, 4096, 256)):  # E > M too
        E = len(counts)
        x, w = torch.randn(E, M, K, device="cuda").bfloat16(), expert_weights(E, N, K, "cuda")
        c = as_int(counts, "cuda")
        y = ops.grouped_gemm_masked(x, w, c)
        assert_close(y.float(), reference.grouped_gemm_masked(x, w, c), GEMM_TOL)
        for e, n in enumerate(counts):
            assert (y[e, n:] == 0).all()
    for fused in ("0", "1"):
        monkeypatch.setenv("LCATTN_MOE_FUSED_SWIGLU", fused)
        T, k, E, D, I = 3, 6, 16, 256, 136
        x = torch.randn(T, D, device="cuda").bfloat16()
        w_gate_up, w_down = expert_weights(E, 2 * I, D, "cuda"), expert_weights(E, D, I, "cuda")
        weights, idx = ops.moe_route(torch.randn(T, E, device="cuda"), k, 1.5)
        out = ops.moe_experts(x, weights, idx, w_gate_up, w_down, 0.5)
        assert_close(out.float(), reference.moe_experts(x, weights, idx, w_gate_up, w_down, 0.5), 2e-2)


@pytest.mark.cuda
@pytest.mark.parametrize("T", [1, 8, 300])
def test_grid_size_does_not_change_output_cuda(monkeypatch, T):
    """The balanced persistent grid (each CTA the same number of tiles) computes the same tiles as a
    grid of every SM and as a small odd one (LCATTN_GROUPED_GEMM_CTAS), and as the masked layout's grid
    sized by expected_rows (exact, and far too low): bitwise equal, on decode routing (6 of 256 experts
    per token plus a shared expert) and a prefill-sized call, both layouts."""
    E, N, K = 257, 4096, 512
    picks = torch.rand(T, E - 1).argsort(dim=1)[:, :6].flatten()
    counts = torch.bincount(picks, minlength=E)
    counts[E - 1] = T
    x = torch.randn(int(counts.sum()), K, device="cuda").bfloat16()
    w, offsets = expert_weights(E, N, K, "cuda"), offsets_of(counts.tolist(), "cuda")
    xm, c = torch.randn(E, T, K, device="cuda").bfloat16(), as_int(counts.tolist(), "cuda")
    balanced = ops.grouped_gemm_contiguous(x, w, offsets), ops.grouped_gemm_masked(xm, w, c)
    assert_close(balanced[0].float(), reference.grouped_gemm_contiguous(x, w, offsets), GEMM_TOL)
    assert_close(balanced[1].float(), reference.grouped_gemm_masked(xm, w, c), GEMM_TOL)
    for hint in (int(counts.sum()), 1):
        assert torch.equal(ops.grouped_gemm_masked(xm, w, c, expected_rows=hint), balanced[1]), hint
    for ctas in ("100000", "7"):
        monkeypatch.setenv("LCATTN_GROUPED_GEMM_CTAS", ctas)
        forced = ops.grouped_gemm_contiguous(x, w, offsets), ops.grouped_gemm_masked(xm, w, c)
        assert torch.equal(forced[0], balanced[0]) and torch.equal(forced[1], balanced[1]), ctas


@pytest.mark.cuda
def test_unknown_tile_override_is_an_error_cuda(monkeypatch):
    monkeypatch.setenv("LCATTN_GROUPED_GEMM_TILE", "n48")
    x, w = torch.randn(4, 16, device="cuda").bfloat16(), expert_weights(2, 8, 16, "cuda")
    with pytest.raises(RuntimeError, match=r"LCATTN_GROUPED_GEMM_TILE must be n32, n64, n128 or n256, got 'n48'"):
        ops.grouped_gemm_contiguous(x, w, offsets_of([1, 3], "cuda"))


@pytest.fixture(params=["separate", "fused"])
def swiglu_pass(request, monkeypatch):
    """moe_experts with SwiGLU as its own pass, and in the gate+up GEMM's epilogue."""
    monkeypatch.setenv("LCATTN_MOE_FUSED_SWIGLU", "1" if request.param == "fused" else "0")
    return request.param


# Mean rows per expert 3, 48, 100 and 350 pick each tile of the gated GEMM; 2I = 272 is not a
# multiple of the 128-feature tile.
@pytest.mark.parametrize("T,k,E,D,I", [
    (13, 2, 8, 32, 24),
    (1, 6, 256, 64, 32),     # decode: 6 of 256 experts
    (0, 2, 4, 16, 8),        # no tokens
    (96, 2, 4, 256, 136),
    (200, 2, 4, 256, 136),
    (700, 2, 4, 128, 64),
    (9, 6, 16, 4096, 2048),  # V4-Flash dims
    (3, 6, 8, 7168, 3072),   # V4-Pro dims
])
def test_moe_experts(device, swiglu_pass, T, k, E, D, I):
    x = torch.randn(T, D, device=device).bfloat16()
    w_gate_up, w_down = expert_weights(E, 2 * I, D, device), expert_weights(E, D, I, device)
    weights, idx = ops.moe_route(torch.randn(T, E, device=device), k, 1.5)
    limit = 0.5  # small enough that the clamps bite
    out = ops.moe_experts(x, weights, idx, w_gate_up, w_down, limit)
    assert out.shape == (T, D) and out.dtype == torch.bfloat16
    if T:
        assert_close(out.float(), reference.moe_experts(x, weights, idx, w_gate_up, w_down, limit), 2e-2)
        unweighted = ops.moe_experts(x, None, idx, w_gate_up, w_down, limit)
        assert_close(unweighted.float(), reference.moe_experts(x, None, idx, w_gate_up, w_down, limit), 2e-2)


def test_interleave_gate_up_layout():
    E, I, D = 2, 24, 5
    gate, up = torch.randn(E, I, D), torch.randn(E, I, D)
    w = ops.interleave_gate_up(torch.cat([gate, up], 1))
    for i in range(I):
        assert torch.equal(w[:, i // 8 * 16 + i % 8], gate[:, i])
        assert torch.equal(w[:, i // 8 * 16 + 8 + i % 8], up[:, i])
    assert torch.equal(ops.deinterleave_gate_up(w), torch.cat([gate, up], 1))
    with pytest.raises(ValueError, match=r"\[lcattn\] interleave_gate_up: 2I must be a multiple of 16, got 24"):
        ops.interleave_gate_up(torch.randn(E, 24, D))
    with pytest.raises(ValueError, match=r"\[lcattn\] deinterleave_gate_up: w must be \[..., 2I, D\], got shape "
                                         r"\(16,\)"):
        ops.deinterleave_gate_up(torch.randn(16))


def test_moe_experts_checkpoint_layout(device, swiglu_pass):
    """moe_experts on interleave_gate_up of gate-rows-first weights, against fp32 math on those weights."""
    T, k, E, D, I, limit = 11, 2, 4, 64, 48, 0.5
    x = torch.randn(T, D, device=device).bfloat16()
    w_gate_up, w_down = expert_weights(E, 2 * I, D, device), expert_weights(E, D, I, device)
    weights, idx = ops.moe_route(torch.randn(T, E, device=device), k, 1.5)
    out = ops.moe_experts(x, weights, idx, ops.interleave_gate_up(w_gate_up), w_down, limit)
    expected = torch.zeros(T, D, device=device)
    for t in range(T):
        for j in range(k):
            e = int(idx[t, j])
            gate, up = (w_gate_up[e].float() @ x[t].float()).chunk(2)
            expected[t] += weights[t, j] * (w_down[e].float() @ reference.swiglu(gate, up, limit))
    assert_close(out.float(), expected, 2e-2)


@pytest.mark.cuda
@pytest.mark.skipif(os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING") == "1",
                    reason="graph capture allocates through the caching allocator")
def test_moe_experts_replays_in_cuda_graph_cuda(swiglu_pass):
    T, k, E, D, I = 8, 6, 64, 256, 128
    x = torch.randn(T, D, device="cuda").bfloat16()
    w_gate_up, w_down = expert_weights(E, 2 * I, D, "cuda"), expert_weights(E, D, I, "cuda")
    weights, idx = ops.moe_route(torch.randn(T, E, device="cuda"), k, 1.5)
    graph, out = capture(lambda: ops.moe_experts(x, weights, idx, w_gate_up, w_down, 10.0))
    for _ in range(3):
        new_w, new_idx = ops.moe_route(torch.randn(T, E, device="cuda"), k, 1.5)
        weights.copy_(new_w)
        idx.copy_(new_idx)
        x.copy_(torch.randn_like(x, dtype=torch.float32))
        graph.replay()
        assert_close(out.float(), reference.moe_experts(x, weights, idx, w_gate_up, w_down, 10.0), 2e-2)


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
    # Infinite logits (SPEC 6): all picked -inf -> every weight 0 / 0; one +inf -> NaN for it, 0 for the rest.
    inf = torch.zeros(2, E, device=device)
    inf[0], inf[1, 3] = float("-inf"), float("inf")
    w, idx = ops.moe_route(inf, k, 1.5)
    ref_w, ref_idx = reference.moe_route(inf, k, 1.5)
    assert torch.equal(idx.cpu(), ref_idx.cpu()) and idx[1, 0] == 3
    assert w[0].isnan().all() and w[1, 0].isnan() and torch.equal(w[1, 1:].cpu(), torch.zeros(k - 1))
    assert torch.equal(w.isnan().cpu(), ref_w.isnan().cpu())


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
    w = torch.randn(2, 16, 8, device=device).bfloat16()
    with pytest.raises(RuntimeError, match=r"\[lcattn\] grouped_gemm_contiguous: offsets must be nondecreasing"):
        ops.grouped_gemm_contiguous(x, w, as_int([0, 7, 6], device))
    with pytest.raises(RuntimeError, match=r"offsets must start at 0 and end at M = 6, got 0 and 5"):
        ops.grouped_gemm_contiguous(x, w, as_int([0, 2, 5], device))
    with pytest.raises(RuntimeError, match=r"\[lcattn\] grouped_gemm_contiguous: w dim 2 must be 8"):
        ops.grouped_gemm_contiguous(x, w[..., :4].contiguous(), as_int([0, 2, 6], device))
    with pytest.raises(RuntimeError, match=r"\[lcattn\] grouped_gemm_masked: counts values must lie in \[0, 3\]"):
        ops.grouped_gemm_masked(x.view(2, 3, 8), w, as_int([1, 4], device))
    for hint in (-1, 7):
        with pytest.raises(RuntimeError, match=rf"\[lcattn\] grouped_gemm_masked: expected_rows must lie in \[0, 6\], "
                                               rf"got {hint}"):
            ops.grouped_gemm_masked(x.view(2, 3, 8), w, as_int([1, 2], device), expected_rows=hint)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] moe_route: k must lie in \[1, E = 4\]"):
        ops.moe_route(torch.randn(3, 4, device=device), 5, 1.0)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] moe_route: token_ids values must lie in \[0, 9\]"):
        ops.moe_route(torch.randn(3, 4, device=device), 2, 1.0, tid2eid=as_int([[0, 1]] * 10, device),
                      token_ids=torch.tensor([0, 10, 2], device=device))
    with pytest.raises(RuntimeError, match=r"\[lcattn\] moe_permute: indices values must lie in \[0, 3\]"):
        ops.moe_permute(x, as_int([[0], [1], [2], [3], [4], [0]], device), 4)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] moe_unpermute: rows values must lie in \[0, 5\]"):
        ops.moe_unpermute(x, as_int([[6]], device))
    # E past an int (zero-size weights hold any E): refused, not truncated (E = 2^32 + 1 would run as 1)
    for E in (2**31, 2**32 + 1):
        empty = torch.empty(E, 8, 0, device=device, dtype=torch.bfloat16)
        with pytest.raises(RuntimeError, match=r"\[lcattn\] grouped_gemm_contiguous: E \(w dim 0\) must lie in "
                                               r"\[0, 2147483646\]"):
            ops.grouped_gemm_contiguous(x[:, :0], empty, as_int([0, 6], device))
        with pytest.raises(RuntimeError, match=r"\[lcattn\] grouped_gemm_masked: E \(x dim 0\) must lie in"):
            ops.grouped_gemm_masked(torch.empty(E, 1, 0, device=device, dtype=torch.bfloat16), empty,
                                    as_int([0], device))
        with pytest.raises(RuntimeError, match=r"\[lcattn\] moe_experts: E \(w_gate_up dim 0\) must lie in"):
            ops.moe_experts(x, None, as_int([[0]] * 6, device), empty, empty, 10.0)
    for num_experts in (0, 2**31, 2**32 + 1):  # not truncated to 1, no 16 GB offsets
        with pytest.raises(RuntimeError, match=r"\[lcattn\] moe_permute: num_experts must lie in \[1, 65536\]"):
            ops.moe_permute(x, as_int([[0]] * 6, device), num_experts)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] moe_route: route_scale must be finite and at least 0"):
        ops.moe_route(torch.randn(3, 4, device=device), 2, float("nan"))
    with pytest.raises(RuntimeError, match=r"\[lcattn\] grouped_gemm_contiguous: N and K must be multiples of 8, "
                                           r"got N = 33, K = 8"):
        ops.grouped_gemm_contiguous(x, torch.randn(2, 33, 8, device=device).bfloat16(), as_int([0, 2, 6], device))
    with pytest.raises(RuntimeError, match=r"\[lcattn\] grouped_gemm_masked: N and K must be multiples of 8, "
                                           r"got N = 8, K = 12"):
        ops.grouped_gemm_masked(torch.randn(2, 3, 12, device=device).bfloat16(),
                                torch.randn(2, 8, 12, device=device).bfloat16(), as_int([1, 1], device))
    with pytest.raises(RuntimeError, match=r"\[lcattn\] moe_experts: D and I must be multiples of 8, got D = 8, I = 4"):
        ops.moe_experts(x, None, as_int([[0]] * 6, device), torch.randn(2, 8, 8, device=device).bfloat16(),
                        torch.randn(2, 8, 4, device=device).bfloat16(), 10.0)
    offset_view = torch.randn(6 * 8 + 1, device=device).bfloat16()[1:].view(6, 8)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] grouped_gemm_contiguous: x must start at a 16-byte aligned"):
        ops.grouped_gemm_contiguous(offset_view, w, as_int([0, 2, 6], device))
    w_gate_up, w_down = torch.randn(4, 16, 8, device=device).bfloat16(), torch.randn(4, 8, 8, device=device).bfloat16()
    with pytest.raises(RuntimeError, match=r"\[lcattn\] moe_experts: indices values must lie in \[0, 3\]"):
        ops.moe_experts(x, None, as_int([[0], [1], [2], [3], [4], [0]], device), w_gate_up, w_down, 10.0)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] moe_experts: w_down dim 2 must be 8"):
        ops.moe_experts(x, None, as_int([[0]] * 6, device), w_gate_up, w_down[..., :4].contiguous(), 10.0)
    for limit in (float("nan"), -1.0):  # a NaN limit would clamp nothing
        with pytest.raises(RuntimeError, match=r"\[lcattn\] moe_experts: swiglu_limit must be finite and at least 0"):
            ops.moe_experts(x, None, as_int([[0]] * 6, device), w_gate_up, w_down, limit)
