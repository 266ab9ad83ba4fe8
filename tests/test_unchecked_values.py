"""Index and length values out of range with the value checks off (LCATTN_CHECK_VALUES=0, as inside
a captured CUDA graph): nothing is read or written out of bounds, an out-of-range index means
"none", positions and lengths are clamped (csrc/torch/checks.h)."""
import pytest
import torch

from lcattn import ops
from lcattn.modules.rope import plain_inv_freq
from lcattn.testing import assert_close


@pytest.fixture
def unchecked(monkeypatch):
    monkeypatch.setenv("LCATTN_CHECK_VALUES", "0")


def ints(values, device):
    return torch.tensor(values, dtype=torch.int32, device=device)


def test_checks_run_by_default(device):
    with pytest.raises(RuntimeError, match=r"\[lcattn\] moe_permute: indices values must lie in \[0, 3\]"):
        ops.moe_permute(torch.zeros(2, 8, device=device).bfloat16(), ints([[0, 4], [1, 2]], device), 4)


def test_hash_route_out_of_range_is_no_expert(device, unchecked):
    V, E, k = 6, 4, 2
    table = ints([[0, 1], [1, 2], [2, 3], [3, 0], [0, 2], [4, 1]], device)  # row 5 names expert 4 of 4
    logits = torch.randn(4, E, device=device)
    token_ids = torch.tensor([-3, 1, V, 5], device=device)
    weights, idx = ops.moe_route(logits, k, 1.5, tid2eid=table, token_ids=token_ids)
    assert idx.tolist() == [[-1, -1], [1, 2], [-1, -1], [-1, 1]]
    assert weights[0].tolist() == [0, 0] and weights[2].tolist() == [0, 0] and weights[3, 0] == 0
    assert_close(weights[3, 1], torch.tensor(1.5, device=device), 1e-6)  # the one valid expert takes it all
    s = torch.sqrt(torch.nn.functional.softplus(logits[1, [1, 2]]))
    assert_close(weights[1], s / s.sum() * 1.5, 1e-5)


def test_moe_slots_out_of_range_add_nothing(device, unchecked):
    T, k, E, D, I = 5, 3, 4, 32, 16
    x = torch.randn(T, D, device=device).bfloat16()
    w_gate_up = (torch.randn(E, 2 * I, D, device=device) * D ** -0.5).bfloat16()
    w_down = (torch.randn(E, D, I, device=device) * I ** -0.5).bfloat16()
    idx = ints([[0, -1, 2], [E, 1, 3], [2, 2 * E, -7], [1, 0, 3], [3, 3, -1]], device)
    weights = torch.rand(T, k, device=device)
    bad = (idx < 0) | (idx >= E)
    x_perm, offsets, rows = ops.moe_permute(x, idx, E)
    assert (rows[bad] == -1).all() and int(offsets[-1]) == int((~bad).sum())
    got = ops.moe_experts(x, weights, idx, w_gate_up, w_down, 10.0)
    want = ops.moe_experts(x, weights.masked_fill(bad, 0), idx.masked_fill(bad, 0), w_gate_up, w_down, 10.0)
    assert_close(got.float(), want.float(), 1e-2)
    y = torch.randn(7, D, device=device).bfloat16()
    rows = ints([[0, -2], [7, 3], [6, 100]], device)
    w = torch.rand(3, 2, device=device)
    outside = (rows < 0) | (rows >= 7)
    assert_close(ops.moe_unpermute(y, rows, w).float(),
                 ops.moe_unpermute(y, rows.masked_fill(outside, 0), w.masked_fill(outside, 0)).float(), 1e-2)


def test_grouped_gemm_offsets_and_counts_are_clamped(device, unchecked):
    x, w = torch.randn(6, 16, device=device).bfloat16(), torch.randn(3, 8, 16, device=device).bfloat16()
    y = ops.grouped_gemm_contiguous(x, w, ints([0, 9, 2, -4], device))  # past M, decreasing, negative
    assert_close(y.float(), x.float() @ w[0].float().T, 1e-2)  # expert 0 clamped to all 6 rows, the others to none
    xm = torch.randn(3, 4, 16, device=device).bfloat16()
    ym = ops.grouped_gemm_masked(xm, w, ints([7, -1, 2], device))
    want = ops.grouped_gemm_masked(xm, w, ints([4, 0, 2], device))  # counts clamped into [0, M]
    assert torch.equal(ym, want)


def test_gather_rows_out_of_range_gives_zeros(device, unchecked):
    pool = torch.randn(1, 5, 8, device=device).bfloat16()
    out = ops.gather_rows(pool, ints([[[0, 5, -1, 99]]], device))
    assert torch.equal(out[0, 0, 0], pool[0, 0]) and (out[0, 0, 1:] == 0).all()


def test_compress_lengths_and_positions_are_clamped(device, unchecked):
    B, S, c, ratio = 2, 8, 32, 4
    kv, score = torch.randn(B, S, 2 * c, device=device), torch.randn(B, S, 2 * c, device=device)
    ape, norm = torch.randn(ratio, 2 * c, device=device), torch.ones(c, device=device)
    inv_freq = plain_inv_freq(10000.0, 16, device)

    def run(lens, start):
        rings = ops.compress_state(B, ratio, 2 * c, True, device)
        out = torch.zeros(B, 4, c, device=device)
        ops.compress_kv(kv, score, ints(lens, device), ints(start, device), *rings, ape, norm, inv_freq, out, ratio,
                        True)
        return out, rings

    got, got_rings = run([S + 5, -3], [-4, 0])
    want, want_rings = run([S, 0], [0, 0])
    assert torch.equal(got, want) and all(torch.equal(a, b) for a, b in zip(got_rings, want_rings))
