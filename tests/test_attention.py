"""sparse_attn and dense_attn (SPEC 5) against the fp32 reference."""
import os
import re

import pytest
import torch

from lcattn import ops, reference
from lcattn.modules.rope import plain_inv_freq
from lcattn.testing import MODEL_SHAPES, assert_close
from lcattn.testing.bench import kernel_names

OUT_TOL, LSE_TOL = 1e-2, 1e-4  # bf16 output; fp32 log-sum-exp


def make_attention(B, S, H, D, rope_dim, L, N, q_start, kv_start, device):
    q = torch.randn(B, S, H, D, device=device).bfloat16()
    kv = torch.randn(B, L, D, device=device).bfloat16()
    ckv = torch.randn(B, N, D, device=device).bfloat16()
    sink = torch.randn(H, device=device)
    inv_freq = plain_inv_freq(10000.0, rope_dim, device)
    as_int = lambda v: torch.tensor(v, dtype=torch.int32, device=device)  # noqa: E731
    return q, kv, as_int(kv_start), as_int(q_start), ckv, sink, inv_freq


def random_indices(B, S, K, N, device, invalid=0.2):
    idx = torch.stack([torch.stack([torch.randperm(N, device=device)[:K] for _ in range(S)]) for _ in range(B)])
    idx = idx.masked_fill(torch.rand(B, S, K, device=device) < invalid, -1)
    return idx.to(torch.int32)


def check(out, lse, ref_out, ref_lse):
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    assert_close(out.float(), ref_out, OUT_TOL, "out")
    assert_close(lse, ref_lse, LSE_TOL, "lse")


# The math schedules of the Hopper kernel: version 7 (logits and softmax by keys; bf16 entries'
# default but for prefill of 8 or more key blocks), version 4 (by dims; kv_fp8 entries' default), each
# also with the other way of writing the output (by keys through shared memory, by dims with 4-byte
# stores by default), and version 6 (pairs of blocks, one split; bf16 prefill's default).
SCHEDULES = {"keys": {"LCATTN_ATTN_SCHEDULE": "keys"}, "dims": {"LCATTN_ATTN_SCHEDULE": "dims"},
             "keys_unstaged": {"LCATTN_ATTN_SCHEDULE": "keys", "LCATTN_ATTN_STAGED_OUT": "0"},
             "dims_staged": {"LCATTN_ATTN_SCHEDULE": "dims", "LCATTN_ATTN_STAGED_OUT": "1"},
             "pair": {"LCATTN_ATTN_PAIR": "1", "LCATTN_ATTN_SPLITS": "1"}}
SCHEDULE_NUMBER = {"dims": 0, "keys": 1}  # attention_sm90.cu's Schedule


def hopper_call(form, q, kv, kvs, qs, ckv, idx, sink, f):
    """The lcattn call and the reference of a Hopper test form: sparse (idx), dense at ratio 128 or 4, or
    the window alone."""
    ratio = {"sparse": None, "dense128": 128, "dense4": 4, "window": 0}[form]
    if ratio is None:
        return (lambda: ops.sparse_attn(q, kv, kvs, qs, ckv, idx, sink, f),
                lambda: reference.attention(q, kv, kvs, qs, ckv, sink, f, indices=idx))
    return (lambda: ops.dense_attn(q, kv, kvs, qs, ckv, sink, f, ratio=ratio),
            lambda: reference.attention(q, kv, kvs, qs, ckv, sink, f, ratio=ratio))


def ran_sm90_kernel(kernels, fp8, schedule, staged_out=None, cluster=False):
    """Whether the profiler's kernel lines name attention_sm90_kernel<fp8, schedule, staged_out,
    cluster> (staged_out None: the schedule's default, the output through shared memory by keys only;
    never with the cluster combine)."""
    flag = {False: "false", True: "true"}
    if staged_out is None:
        staged_out = schedule == "keys" and not cluster
    schedule = rf"\(.*?Schedule\){SCHEDULE_NUMBER[schedule]}"
    pattern = rf"attention_sm90_kernel<{flag[fp8]}, {schedule}, {flag[staged_out]}, {flag[cluster]}>"
    return re.search(pattern, kernels) is not None


# (B, S, H, D, rope_dim, window, L, N, K, q_start, kv_start)
SPARSE_CASES = [
    (2, 9, 3, 64, 16, 8, 30, 11, 5, [20, 3], [0, 0]),         # irregular; window smaller than history
    (2, 5, 4, 512, 64, 128, 140, 40, 16, [133, 200], [0, 70]),  # kv buffer starting mid-sequence
    (3, 1, 64, 512, 64, 128, 128, 64, 24, [127, 500, 999], [0, 373, 872]),  # decode, V4 head dim
    (2, 7, 3, 64, 16, 16, 22, 10, 4, [0, 5], [-15, -10]),  # sequence start: rows before position 0
]


@pytest.mark.parametrize("B,S,H,D,rd,window,L,N,K,q_start,kv_start", SPARSE_CASES)
def test_sparse_matches_reference(device, B, S, H, D, rd, window, L, N, K, q_start, kv_start):
    q, kv, kvs, qs, ckv, sink, f = make_attention(B, S, H, D, rd, L, N, q_start, kv_start, device)
    idx = random_indices(B, S, K, N, device)
    out, lse = ops.sparse_attn(q, kv, kvs, qs, ckv, idx, sink, f, window=window)
    check(out, lse, *reference.attention(q, kv, kvs, qs, ckv, sink, f, window=window, indices=idx))


@pytest.mark.parametrize("model", ["flash", "pro"])
def test_sparse_model_shapes(device, model):
    shape = MODEL_SHAPES[model]
    H, D, K = shape["heads"], shape["head_dim"], shape["index_topk"]
    N = K + 37
    q, kv, kvs, qs, ckv, sink, f = make_attention(1, 2, H, D, shape["rope_dim"], 130, N, [4 * N - 2], [4 * N - 131],
                                                  device)
    idx = random_indices(1, 2, K, N, device, invalid=0.0)
    out, lse = ops.sparse_attn(q, kv, kvs, qs, ckv, idx, sink, f)
    check(out, lse, *reference.attention(q, kv, kvs, qs, ckv, sink, f, indices=idx))


@pytest.mark.parametrize("ratio,q_start", [(128, [0, 1000]), (4, [5, 61]), (0, [3, 300])])
def test_dense_matches_reference(device, ratio, q_start):
    B, S, H, D, N = 2, 6, 4, 128, 9
    kv_start = [0, max(0, q_start[1] - 133)]
    q, kv, kvs, qs, ckv, sink, f = make_attention(B, S, H, D, 32, 140, N, q_start, kv_start, device)
    out, lse = ops.dense_attn(q, kv, kvs, qs, ckv, sink, f, ratio=ratio)
    check(out, lse, *reference.attention(q, kv, kvs, qs, ckv, sink, f, ratio=ratio))


def test_kv_fp8_form(device):
    """ops.quantize_kv_fp8: the bytes of FlashMLA's V4 fp8 entries (584 at V4's dims), each tile's scale the smallest
    power of two at least max(amax / 448, 1e-4), values within e4m3 rounding, RoPE channels in bf16,
    a tile with NaN or infinity stored as NaN; ops.dequantize_kv_fp8 reads it back."""
    assert ops.kv_fp8_bytes(512, 64) == 584 and ops.kv_fp8_bytes(64, 16) == 88
    x = torch.randn(3, 50, 512, device=device) * torch.logspace(-9, 6, 50, device=device)[:, None]
    x[0, 0, 70], x[0, 1, 400] = float("nan"), float("inf")  # tiles 1 and 6
    q = ops.quantize_kv_fp8(x, 64)
    assert q.dtype == torch.uint8 and q.shape == (3, 50, 584) and (q[..., 583] == 0).all()
    scales = q[..., 576:583].view(torch.float8_e8m0fnu).float()
    need = (x[..., :448].unflatten(-1, (7, 64)).abs().amax(-1) / 448).clamp_min(1e-4)
    bad = ~need.isfinite()
    assert bad.sum() == 2 and bad[0, 0, 1] and bad[0, 1, 6] and scales[bad].isnan().all()
    assert (scales[~bad] >= need[~bad]).all() and (scales[~bad] / 2 < need[~bad]).all()
    y = ops.dequantize_kv_fp8(q, 512, 64).float()
    assert torch.equal(y[..., 448:], x[..., 448:].bfloat16().float())
    step = scales.repeat_interleave(64, -1)  # e4m3 rounding: half a unit, 2^-4 relative, 2^-10 absolute
    bound = step * torch.maximum(x[..., :448].abs() / step * 2**-4, torch.full_like(step, 2**-10))
    nan_tile = bad.repeat_interleave(64, -1)
    assert ((y[..., :448] - x[..., :448]).abs() <= bound)[~nan_tile].all()
    assert y[..., :448][nan_tile].isnan().all()
    with pytest.raises(ValueError, match=r"\[lcattn\] dequantize_kv_fp8: x must be uint8 \[..., 584\]"):
        ops.dequantize_kv_fp8(q[..., :576], 512, 64)
    for head_dim, rope_dim in ((512, -2), (512, 514), (511, 64), (512, 3)):
        got = rf"must be even with 0 <= rope_dim <= head dim, got head dim {head_dim}, rope_dim {rope_dim}"
        with pytest.raises(ValueError, match=r"\[lcattn\] quantize_kv_fp8: head dim and rope_dim " + got):
            ops.quantize_kv_fp8(x[..., :head_dim], rope_dim)
        with pytest.raises(ValueError, match=r"\[lcattn\] dequantize_kv_fp8: head dim and rope_dim " + got):
            ops.dequantize_kv_fp8(q, head_dim, rope_dim)


# (B, S, H, D, rope_dim, L, N, K, q_start, kv_start): S * K < N widens only the selected entries
KV_FP8_CASES = [
    (2, 1, 64, 512, 64, 128, 200, 24, [799, 500], [672, 373]),  # decode, V4 head dim
    (2, 2, 4, 128, 32, 20, 50, 8, [190, 60], [175, 45]),
    (2, 5, 3, 64, 16, 30, 11, 5, [20, 3], [0, 0]),  # S * K >= N: the whole pool
]


@pytest.mark.parametrize("B,S,H,D,rd,L,N,K,q_start,kv_start", KV_FP8_CASES)
def test_kv_fp8_entries_read_as_their_dequantized_values(monkeypatch, device, B, S, H, D, rd, L, N, K, q_start,
                                                         kv_start):
    """ckv in the kv_fp8 form: sparse_attn and dense_attn give, bit for bit, what they give on the
    dequantized bf16 entries under the same schedule (the Hopper kernel's default for bf16 entries is
    version 7, for kv_fp8 version 4: LCATTN_ATTN_SCHEDULE=dims runs version 4 for both), and match the
    fp32 reference on them."""
    monkeypatch.setenv("LCATTN_ATTN_SCHEDULE", "dims")
    q, kv, kvs, qs, _, sink, f = make_attention(B, S, H, D, rd, L, N, q_start, kv_start, device)
    ckv8 = ops.quantize_kv_fp8(torch.randn(B, N, D, device=device) * torch.rand(B, N, 1, device=device) * 8, rd)
    ckv = ops.dequantize_kv_fp8(ckv8, D, rd)
    idx = random_indices(B, S, K, N, device)
    out, lse = ops.sparse_attn(q, kv, kvs, qs, ckv8, idx, sink, f)
    want = ops.sparse_attn(q, kv, kvs, qs, ckv, idx, sink, f)
    assert torch.equal(out, want[0]) and torch.equal(lse, want[1])
    check(out, lse, *reference.attention(q, kv, kvs, qs, ckv, sink, f, indices=idx))
    out, lse = ops.dense_attn(q, kv, kvs, qs, ckv8, sink, f, ratio=4)
    want = ops.dense_attn(q, kv, kvs, qs, ckv, sink, f, ratio=4)
    assert torch.equal(out, want[0]) and torch.equal(lse, want[1])
    check(out, lse, *reference.attention(q, kv, kvs, qs, ckv, sink, f, ratio=4))


def test_kv_fp8_entries_at_an_odd_offset(monkeypatch, device):
    """A uint8 ckv view at an odd byte offset holds the same entries: the op widens them (the Hopper
    kernel reads them as they are only on a 16-byte boundary; both under version 4's schedule, which
    kv_fp8 entries take by default and bf16 ones with LCATTN_ATTN_SCHEDULE=dims)."""
    monkeypatch.setenv("LCATTN_ATTN_SCHEDULE", "dims")
    q, kv, kvs, qs, _, sink, f = make_attention(1, 2, 64, 512, 64, 130, 40, [150], [21], device)
    ckv8 = ops.quantize_kv_fp8(torch.randn(1, 40, 512, device=device), 64)
    odd = torch.zeros(ckv8.numel() + 1, dtype=torch.uint8, device=device)[1:].view(ckv8.shape)
    odd.copy_(ckv8)
    idx = random_indices(1, 2, 8, 40, device)
    for widened_rows in (idx, random_indices(1, 2, 32, 40, device)):  # selected rows, then the whole pool
        assert all(torch.equal(a, b) for a, b in zip(ops.sparse_attn(q, kv, kvs, qs, odd, widened_rows, sink, f),
                                                     ops.sparse_attn(q, kv, kvs, qs, ckv8, widened_rows, sink, f)))
    assert all(torch.equal(a, b) for a, b in zip(ops.dense_attn(q, kv, kvs, qs, odd, sink, f, ratio=4),
                                                 ops.dense_attn(q, kv, kvs, qs, ckv8, sink, f, ratio=4)))


def test_dense_hca_decode_model_shape(device):
    shape = MODEL_SHAPES["flash"]
    pos = [128 * 300 + 5, 128 * 17]
    q, kv, kvs, qs, ckv, sink, f = make_attention(2, 1, shape["heads"], 512, 64, 128, 301, pos,
                                                  [p - 127 for p in pos], device)
    out, lse = ops.dense_attn(q, kv, kvs, qs, ckv, sink, f, ratio=128)
    check(out, lse, *reference.attention(q, kv, kvs, qs, ckv, sink, f, ratio=128))


@pytest.mark.cuda
def test_sparse_prefill_scale_cuda():
    """A prefill chunk of 256 tokens of a V4-Flash CSA layer deep in a sequence."""
    shape = MODEL_SHAPES["flash"]
    S, K, N, p0 = 256, shape["index_topk"], 4000, 16000
    q, kv, kvs, qs, ckv, sink, f = make_attention(1, S, shape["heads"], 512, 64, S + 127, N, [p0], [p0 - 127], "cuda")
    idx = random_indices(1, S, K, N, "cuda", invalid=0.05)
    out, lse = ops.sparse_attn(q, kv, kvs, qs, ckv, idx, sink, f)
    check(out, lse, *reference.attention(q, kv, kvs, qs, ckv, sink, f, indices=idx))


# Shapes that run on the Hopper kernels on CUDA (head dim 512, heads in groups of 64): prefill, one
# CTA per token and head group; decode, where the keys are split over CTAs and combined.
# (B, S, H, K, N, q_start, kv_start, L)
HOPPER_CASES = [
    (1, 200, 64, 512, 700, [2700], [2573], 327),                    # V4-Flash prefill, 640 keys
    (1, 70, 128, 1024, 1100, [4397], [4270], 197),                  # V4-Pro prefill, 1152 keys
    (4, 1, 64, 512, 900, [3599, 130, 2000, 64], [3472, 3, 1873, 0], 128),  # decode batch
    (2, 33, 64, 100, 140, [0, 37], [-127, -90], 160),               # sequence start, 100 slots
    # 600 (token, head group) items, several per SM, from 1 key (position 0) to several blocks.
    (2, 300, 64, 100, 140, [0, 250], [-127, 123], 427),
]


@pytest.mark.cuda
@pytest.mark.parametrize("B,S,H,K,N,q_start,kv_start,L", HOPPER_CASES)
@pytest.mark.parametrize("form", ["sparse", "dense128", "dense4", "window"])
def test_hopper_shapes_cuda(B, S, H, K, N, q_start, kv_start, L, form):
    q, kv, kvs, qs, ckv, sink, f = make_attention(B, S, H, 512, 64, L, N, q_start, kv_start, "cuda")
    if form == "sparse":
        idx = random_indices(B, S, K, N, "cuda", invalid=0.2)
        out, lse = ops.sparse_attn(q, kv, kvs, qs, ckv, idx, sink, f)
        ref = reference.attention(q, kv, kvs, qs, ckv, sink, f, indices=idx)
    else:
        ratio = {"dense128": 128, "dense4": 4, "window": 0}[form]
        out, lse = ops.dense_attn(q, kv, kvs, qs, ckv, sink, f, ratio=ratio)
        ref = reference.attention(q, kv, kvs, qs, ckv, sink, f, ratio=ratio)
    check(out, lse, *ref)


@pytest.mark.cuda
@pytest.mark.parametrize("B,S,H,K,N,q_start,kv_start,L", HOPPER_CASES)
@pytest.mark.parametrize("form", ["sparse", "dense128", "window"])
@pytest.mark.parametrize("splits", [1, 3])
def test_hopper_pair_schedule_cuda(monkeypatch, B, S, H, K, N, q_start, kv_start, L, form, splits):
    """Version 6 (LCATTN_ATTN_PAIR=1), with one split per query and with 3 (LCATTN_ATTN_SPLITS, at
    most the key blocks; partials combined by the combine kernel): the reference's result on the
    Hopper cases (an odd block count pairs its last block with an absent one), bitwise repeatable, and
    the kernel that ran."""
    monkeypatch.setenv("LCATTN_ATTN_PAIR", "1")
    monkeypatch.setenv("LCATTN_ATTN_SPLITS", str(splits))
    monkeypatch.setenv("LCATTN_ATTN_FUSED_COMBINE", "0")
    q, kv, kvs, qs, ckv, sink, f = make_attention(B, S, H, 512, 64, L, N, q_start, kv_start, "cuda")
    sink[:8], sink[8:16] = float("-inf"), 30.0
    if form == "sparse":
        idx = random_indices(B, S, K, N, "cuda", invalid=0.2)

        def run():
            return ops.sparse_attn(q, kv, kvs, qs, ckv, idx, sink, f)
        ref = reference.attention(q, kv, kvs, qs, ckv, sink, f, indices=idx)
    else:
        ratio = {"dense128": 128, "window": 0}[form]

        def run():
            return ops.dense_attn(q, kv, kvs, qs, ckv, sink, f, ratio=ratio)
        ref = reference.attention(q, kv, kvs, qs, ckv, sink, f, ratio=ratio)
    out, kernels = run_and_kernels(run)
    if kernels:  # every case has at least 2 key blocks, so 3 forced splits are at least 2
        assert "attention_sm90_pair_kernel" in kernels, kernels
        assert ("attention_combine_kernel" in kernels) == (splits > 1), kernels
    check(*out, *ref)
    again = run()
    assert torch.equal(out[0], again[0]) and torch.equal(out[1], again[1])


@pytest.mark.cuda
@pytest.mark.parametrize("B,S,H,K,N,q_start,kv_start,L", HOPPER_CASES)
@pytest.mark.parametrize("form", ["sparse", "dense128", "dense4", "window"])
@pytest.mark.parametrize("splits", ["0", "3"])
@pytest.mark.parametrize("schedule", ["dims", "keys"])
def test_hopper_schedules_cuda(monkeypatch, B, S, H, K, N, q_start, kv_start, L, form, splits, schedule):
    """Each schedule of the math warpgroups (LCATTN_ATTN_SCHEDULE: logits and softmax split by keys,
    or by dims), with the default splits and with 3 (fused combine): the reference's result on the
    Hopper cases, sinks that take nothing or almost all, bitwise repeatable, and the kernel that ran."""
    monkeypatch.setenv("LCATTN_ATTN_SCHEDULE", schedule)
    monkeypatch.setenv("LCATTN_ATTN_SPLITS", splits)
    monkeypatch.delenv("LCATTN_ATTN_STAGED_OUT", raising=False)  # each schedule's own way of writing O
    q, kv, kvs, qs, ckv, sink, f = make_attention(B, S, H, 512, 64, L, N, q_start, kv_start, "cuda")
    sink[:8], sink[8:16] = float("-inf"), 30.0
    run, reference_of = hopper_call(form, q, kv, kvs, qs, ckv, random_indices(B, S, K, N, "cuda", invalid=0.2),
                                    sink, f)
    ref = reference_of()
    out, kernels = run_and_kernels(run)
    if kernels:
        assert ran_sm90_kernel(kernels, False, schedule), kernels
    check(*out, *ref)
    again = run()
    assert torch.equal(out[0], again[0]) and torch.equal(out[1], again[1])


@pytest.mark.cuda
@pytest.mark.parametrize("case,kernel", [
    (HOPPER_CASES[0], "pair"),   # V4-Flash prefill, 10 key blocks: version 6
    (HOPPER_CASES[1], "pair"),   # V4-Pro prefill, 18 blocks
    (HOPPER_CASES[2], "pair"),   # decode of 4 queries in 5 splits, 10 blocks: version 6
    (HOPPER_CASES[3], "pair"),   # prefill of 4 blocks
    ((2, 33, 64, 50, 140, [0, 37], [-127, -90], 160), "keys"),  # prefill of 3 blocks: version 7
    # Decode of 160 queries at 4 blocks: one split, too many for the clusters; version 6.
    ((160, 1, 64, 128, 300, [1200 + 7 * i for i in range(160)], [1073 + 7 * i for i in range(160)], 128), "pair"),
    # Decode of 48 queries at 10 blocks: clusters of two, version 7's.
    ((48, 1, 64, 512, 900, [3599 - 13 * i for i in range(48)], [3472 - 13 * i for i in range(48)], 128), "cluster"),
])
def test_hopper_default_kernel_cuda(monkeypatch, case, kernel):
    """Without switches, bf16 entries take version 7 in clusters of two for decode where those apply,
    version 6 for the rest of at least 4 key blocks, and version 7 below: the reference's result and the
    kernel that ran."""
    for name in ("LCATTN_ATTN_SCHEDULE", "LCATTN_ATTN_PAIR", "LCATTN_ATTN_SPLITS", "LCATTN_ATTN_STAGED_OUT",
                 "LCATTN_ATTN_FUSED_COMBINE", "LCATTN_ATTN_RESCALE_SLACK", "LCATTN_ATTN_CLUSTER_SPLITS"):
        monkeypatch.delenv(name, raising=False)
    B, S, H, K, N, q_start, kv_start, L = case
    q, kv, kvs, qs, ckv, sink, f = make_attention(B, S, H, 512, 64, L, N, q_start, kv_start, "cuda")
    idx = random_indices(B, S, K, N, "cuda", invalid=0.2)
    out, kernels = run_and_kernels(lambda: ops.sparse_attn(q, kv, kvs, qs, ckv, idx, sink, f))
    if kernels:
        if kernel == "pair":
            assert "attention_sm90_pair_kernel" in kernels, kernels
        else:
            assert ran_sm90_kernel(kernels, False, "keys", cluster=kernel == "cluster"), kernels
    check(*out, *reference.attention(q, kv, kvs, qs, ckv, sink, f, indices=idx))


@pytest.mark.cuda
def test_hopper_repeat_runs_are_bitwise_identical_cuda():
    for B, S in ((1, 96), (2, 1)):  # prefill and split decode
        q, kv, kvs, qs, ckv, sink, f = make_attention(B, S, 64, 512, 64, S + 127, 600, [2000] * B, [1873] * B, "cuda")
        idx = random_indices(B, S, 512, 600, "cuda")
        first = ops.sparse_attn(q, kv, kvs, qs, ckv, idx, sink, f)
        for _ in range(3):
            again = ops.sparse_attn(q, kv, kvs, qs, ckv, idx, sink, f)
            assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


@pytest.mark.cuda
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_hopper_no_keys_and_extreme_sinks_cuda(monkeypatch, schedule):
    # Query 0 of sequence 1 sees no window row (its buffer starts later) and no index: output 0, lse -inf.
    for name, value in SCHEDULES[schedule].items():
        monkeypatch.setenv(name, value)
    q, kv, kvs, qs, ckv, sink, f = make_attention(2, 3, 64, 512, 64, 130, 50, [400, 10], [273, 11], "cuda")
    idx = random_indices(2, 3, 40, 50, "cuda", invalid=0.0)
    idx[1] = -1
    sink[:8], sink[8:16] = float("-inf"), 30.0  # a sink that takes nothing, and one that takes almost all
    out, lse = ops.sparse_attn(q, kv, kvs, qs, ckv, idx, sink, f)
    ref_out, ref_lse = reference.attention(q, kv, kvs, qs, ckv, sink, f, indices=idx)
    assert torch.equal(out[1, 0], torch.zeros_like(out[1, 0])) and bool((lse[1, 0] == float("-inf")).all())
    check(out, lse, ref_out, ref_lse)


@pytest.mark.cuda
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("form", ["sparse", "dense128"])
@pytest.mark.parametrize("B,S,K,N", [(2, 3, 40, 50), (40, 1, 512, 600)])  # splits; decode's clusters
def test_hopper_nan_logit_cuda(monkeypatch, schedule, form, B, S, K, N):
    """A NaN in one entry: output and lse NaN for every query that sees it, as in the reference (the
    lse too, in every way a row's result is finished: one split, the combine kernel, the fused
    combine, the cluster); the other queries as usual."""
    for name, value in SCHEDULES[schedule].items():
        monkeypatch.setenv(name, value)
    q, kv, kvs, qs, ckv, sink, f = make_attention(B, S, 64, 512, 64, 130, N, [400] * B, [273] * B, "cuda")
    idx = random_indices(B, S, K, N, "cuda", invalid=0.1)
    idx[0, 0, 0] = 1  # entry 1 of sequence 0: visible to its queries in the dense form too (400 // 128 = 3)
    ckv[0, 1, 5] = float("nan")
    call, ref = hopper_call(form, q, kv, kvs, qs, ckv, idx, sink, f)
    out, lse = call()
    ref_out, ref_lse = ref()
    nan_rows = ref_lse.isnan().all(-1)  # the queries that see the NaN entry: every head NaN
    assert nan_rows[0, 0] and not nan_rows[1:].any()
    assert lse[nan_rows].isnan().all() and out[nan_rows].isnan().all()
    check(out, lse, ref_out, ref_lse)


@pytest.mark.cuda
@pytest.mark.parametrize("B,S,H,K,N,q_start,kv_start,L", HOPPER_CASES[:4])
@pytest.mark.parametrize("form", ["sparse", "dense128"])
@pytest.mark.parametrize("rope_dim", [64, 32, 8])
@pytest.mark.parametrize("schedule", ["dims", "keys"])
def test_hopper_reads_kv_fp8_cuda(monkeypatch, B, S, H, K, N, q_start, kv_start, L, form, rope_dim, schedule):
    """The Hopper kernel reads kv_fp8 entries as they are and widens them exactly in shared memory, so
    it gives bit for bit what it gives on the dequantized bf16 entries (prefill, split decode, absent
    keys), also with RoPE widths whose e4m3 part is not a multiple of 32 channels, in both schedules
    of the math warpgroups (by keys each widens both halves of its own rows); and it is the kernel
    that ran."""
    monkeypatch.delenv("LCATTN_ATTN_STAGED_OUT", raising=False)  # each schedule's own way of writing O
    for name, value in SCHEDULES[schedule].items():
        monkeypatch.setenv(name, value)
    q, kv, kvs, qs, _, sink, f = make_attention(B, S, H, 512, rope_dim, L, N, q_start, kv_start, "cuda")
    x = torch.randn(B, N, 512, device="cuda") * torch.rand(B, N, 1, device="cuda") * 8
    ckv8 = ops.quantize_kv_fp8(x, rope_dim)
    idx = random_indices(B, S, K, N, "cuda")

    def run(ckv):
        if form == "sparse":
            return ops.sparse_attn(q, kv, kvs, qs, ckv, idx, sink, f)
        return ops.dense_attn(q, kv, kvs, qs, ckv, sink, f, ratio=128)
    want = run(ops.dequantize_kv_fp8(ckv8, 512, rope_dim))
    got, kernels = run_and_kernels(lambda: run(ckv8))
    if kernels:
        assert ran_sm90_kernel(kernels, True, schedule), kernels
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.cuda
@pytest.mark.parametrize("B,S,H,K,N,q_start,kv_start,L", HOPPER_CASES[:4])
@pytest.mark.parametrize("form", ["sparse", "dense128"])
@pytest.mark.parametrize("rope_dim", [64, 32, 24, 8])
@pytest.mark.parametrize("staged_out", ["0", "1"])
def test_pair_widens_kv_fp8_cuda(monkeypatch, B, S, H, K, N, q_start, kv_start, L, form, rope_dim, staged_out):
    """LCATTN_ATTN_FP8_PAIR=1: version 6 on kv_fp8 entries, copied as they are and widened in shared
    memory by a fourth warpgroup, gives bit for bit version 6's result on the dequantized entries
    (prefill, split decode, absent keys, window rows beside entries), also where the second half's
    e4m3 part is not whole chunks (RoPE widths 32, 24 and 8: 28, 29 and 31 units), with O out
    through shared memory or not; the reference's within rounding; and it is the kernel that ran."""
    for name in ("LCATTN_ATTN_SCHEDULE", "LCATTN_ATTN_SPLITS", "LCATTN_ATTN_KEY_FENCE", "LCATTN_ATTN_PAIR_ROWS_TO_L2",
                 "LCATTN_ATTN_FUSED_COMBINE", "LCATTN_ATTN_CLUSTER_SPLITS", "LCATTN_ATTN_RESCALE_SLACK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LCATTN_ATTN_PAIR", "1")
    monkeypatch.setenv("LCATTN_ATTN_STAGED_OUT", staged_out)
    monkeypatch.setenv("LCATTN_ATTN_FP8_PAIR", "1")
    q, kv, kvs, qs, _, sink, f = make_attention(B, S, H, 512, rope_dim, L, N, q_start, kv_start, "cuda")
    x = torch.randn(B, N, 512, device="cuda") * torch.rand(B, N, 1, device="cuda") * 8
    ckv8 = ops.quantize_kv_fp8(x, rope_dim)
    values = ops.dequantize_kv_fp8(ckv8, 512, rope_dim)
    idx = random_indices(B, S, K, N, "cuda", invalid=0.2)
    want, expected = hopper_call(form, q, kv, kvs, qs, values, idx, sink, f)
    got, kernels = run_and_kernels(hopper_call(form, q, kv, kvs, qs, ckv8, idx, sink, f)[0])
    if kernels:  # attention_sm90_pair_kernel<kPairFp8 | kPairStagedOut or kPairFp8>
        assert f"attention_sm90_pair_kernel<{16 | int(staged_out)}>" in kernels, kernels
    check(*got, *expected())
    want = want()
    # Its P.V products are m64n128, bf16's m64n256: the same k-steps for every output element.
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), "not bit for bit version 6 on bf16"


@pytest.mark.cuda
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_hopper_very_negative_logits_after_an_empty_block_cuda(monkeypatch, schedule):
    """No window row, a first block of absent keys, then keys whose logits are all far below -128 in
    base 2 (q . k about -8000): a finite result equal to the reference's (an absent block's softmax
    rescaled to such a maximum must give 0, not 0 x inf); in every schedule, one split."""
    for name, value in SCHEDULES[schedule].items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LCATTN_ATTN_SPLITS", "1")
    q, kv, kvs, qs, ckv, sink, f = make_attention(1, 1, 64, 512, 64, 128, 200, [1000], [1006], "cuda")
    q.fill_(4.0)
    ckv.copy_(-4.0 + 0.1 * torch.randn_like(ckv, dtype=torch.float32))
    sink.fill_(float("-inf"))  # else the sink takes everything from such logits
    idx = random_indices(1, 1, 192, 200, "cuda", invalid=0.0)
    idx[..., :64] = -1
    out, lse = ops.sparse_attn(q, kv, kvs, qs, ckv, idx, sink, f)
    assert torch.isfinite(out.float()).all() and torch.isfinite(lse).all()
    check(out, lse, *reference.attention(q, kv, kvs, qs, ckv, sink, f, indices=idx))


@pytest.mark.cuda
@pytest.mark.parametrize("schedule", ["dims", "keys"])
@pytest.mark.parametrize("B,S,H,K,N,q_start,kv_start,L", HOPPER_CASES[:4])
def test_hopper_rescale_slack_cuda(monkeypatch, schedule, B, S, H, K, N, q_start, kv_start, L):
    """LCATTN_ATTN_RESCALE_SLACK: with slack 0 a warp skips only blocks whose rescale factors are all 1,
    so the result is bit for bit the default's; with slack 8 (references up to 8 below the running
    maxima) the reference's result, also on keys whose logits rise through the blocks by less than the
    slack each, so that the references lag behind; in every schedule but version 6's."""
    for name, value in SCHEDULES[schedule].items():
        monkeypatch.setenv(name, value)
    q, kv, kvs, qs, ckv, sink, f = make_attention(B, S, H, 512, 64, L, N, q_start, kv_start, "cuda")
    sink[:8], sink[8:16] = float("-inf"), 30.0
    idx = random_indices(B, S, K, N, "cuda", invalid=0.2)

    def run():
        return ops.sparse_attn(q, kv, kvs, qs, ckv, idx, sink, f)
    default = run()
    monkeypatch.setenv("LCATTN_ATTN_RESCALE_SLACK", "0")
    same = run()
    assert torch.equal(default[0], same[0]) and torch.equal(default[1], same[1])
    monkeypatch.setenv("LCATTN_ATTN_RESCALE_SLACK", "8")
    check(*run(), *reference.attention(q, kv, kvs, qs, ckv, sink, f, indices=idx))
    # Rising logits: every head's q is 0.05, entry i is i * 40 / N in every channel, the indices
    # ascending: logit 1.63 i * 40 / N in base 2, about 8 more each block of 64 in the first case (512
    # of 700 entries), so references lag and move in turn; more where fewer keys span the entries.
    q.fill_(0.05)
    ckv.copy_((torch.arange(N, device="cuda", dtype=torch.float32) * 40 / N)[None, :, None].expand(B, N, 512))
    idx = torch.sort(idx, dim=-1).values  # absent (-1) first, then ascending
    check(*run(), *reference.attention(q, kv, kvs, qs, ckv, sink, f, indices=idx))


# Switches of the Hopper kernel that leave its result's bits as they are: environment variable ->
# (its value off, its value on, the kernels it is tested on: bf16 entries by keys (version 7), kv_fp8
# ones by dims (version 4), bf16 entries on version 6 ("pair"); its flag in version 6's form, PairForm).
BITWISE_SWITCHES = {"LCATTN_ATTN_STAGED_OUT": ("0", "1", ["bf16", "kv_fp8", "pair"], 1),
                    "LCATTN_ATTN_KEY_FENCE": ("1", "0", ["pair"], 2),
                    "LCATTN_ATTN_PAIR_ROWS_TO_L2": ("0", "1", ["pair"], 4)}
PAIR_DEFAULT_FORM = 1  # version 6's default: staged output


@pytest.mark.cuda
@pytest.mark.parametrize("B,S,H,K,N,q_start,kv_start,L", HOPPER_CASES[:4] + [
    (2, 9, 64, 256, 32768, [131072 - 9, 120000], [131072 - 136, 119873], 136),  # angles past 105,615 rad
])
@pytest.mark.parametrize("splits", ["0", "1", "3"])
@pytest.mark.parametrize("switch,entries",
                         [(name, e) for name, (*_, forms, _) in BITWISE_SWITCHES.items() for e in forms])
def test_hopper_bitwise_switches_cuda(monkeypatch, switch, entries, B, S, H, K, N, q_start, kv_start, L, splits):
    """The switches that move data, not arithmetic, give the same bits off and on:
    LCATTN_ATTN_STAGED_OUT (one split's O out through shared memory in 16-byte pieces) and, on version
    6, LCATTN_ATTN_KEY_FENCE=0 (no proxy fence before the logits' wgmma) and
    LCATTN_ATTN_PAIR_ROWS_TO_L2 (the next pair's rows asked of L2), in prefill and decode, at
    positions whose angles take sincosf's slow path, with the default splits, with one (the staged
    path at decode too) and with 3 (the partials and the fused combine, the same either way), on bf16
    entries (by keys, and on version 6) and kv_fp8 ones (by dims); and the kernels that ran."""
    for name in ("LCATTN_ATTN_SCHEDULE", "LCATTN_ATTN_FUSED_COMBINE", "LCATTN_ATTN_RESCALE_SLACK",
                 "LCATTN_ATTN_CLUSTER_SPLITS", *BITWISE_SWITCHES):
        monkeypatch.delenv(name, raising=False)  # each form's default kernel, the one switch under test
    pair = entries == "pair"
    monkeypatch.setenv("LCATTN_ATTN_PAIR", "1" if pair else "0")  # else prefill of 4 blocks takes version 6
    monkeypatch.setenv("LCATTN_ATTN_SPLITS", splits)
    q, kv, kvs, qs, ckv, sink, f = make_attention(B, S, H, 512, 64, L, N, q_start, kv_start, "cuda")
    values = ckv  # the entries' values: bf16, or kv_fp8 entries dequantized
    if entries == "kv_fp8":
        ckv = ops.quantize_kv_fp8(ckv.float(), 64)
        values = ops.dequantize_kv_fp8(ckv, 512, 64)
    idx = random_indices(B, S, K, N, "cuda", invalid=0.2)
    fp8 = entries == "kv_fp8"
    off_value, on_value, _, form = BITWISE_SWITCHES[switch]
    results = []
    for on in (False, True):
        monkeypatch.setenv(switch, on_value if on else off_value)
        out, kernels = run_and_kernels(lambda: ops.sparse_attn(q, kv, kvs, qs, ckv, idx, sink, f))
        if kernels and pair:  # attention_sm90_pair_kernel<form>: the default's with this switch's flag set or not
            expected = (PAIR_DEFAULT_FORM & ~form) | (form if on else 0)
            assert f"attention_sm90_pair_kernel<{expected}>" in kernels, kernels
        elif kernels:
            assert ran_sm90_kernel(kernels, fp8, "dims" if fp8 else "keys", staged_out=on), kernels
        if kernels and splits == "3":  # at most 4 splits combine in the last CTA of each query
            assert "attention_combine_kernel" not in kernels, kernels
        results.append(out)
    switched_off, switched_on = results
    assert torch.equal(switched_off[0], switched_on[0]) and torch.equal(switched_off[1], switched_on[1])
    check(*switched_on, *reference.attention(q, kv, kvs, qs, values, sink, f, indices=idx))


def run_and_kernels(fn):
    """fn()'s result and the lines of the CUDA kernels it launches (none where the profiler sees no
    kernel, as under compute-sanitizer)."""
    out = fn()
    return out, kernel_names(fn, warmup=0)


# Split decode: (form, B, K, N, q_start, kv_start). 5 splits, the last row seeing no key; 2 splits (a
# group of the combine with none); 8 splits, the row at position 64 with keys in 2 of them; HCA at 1M
# context, 65 splits.
SPLIT_COMBINE_CASES = [("sparse", 4, 512, 600, [3599, 130, 2000, 5], [3472, 3, 1873, 6]),
                       ("sparse", 4, 128, 600, [3599, 130, 2000, 5], [3472, 3, 1873, 6]),
                       ("dense128", 4, 0, 900, [3599, 130, 2000, 64], [3472, 3, 1873, 0]),
                       ("dense128", 1, 0, 8192, [1048575], [1048448])]


@pytest.mark.cuda
@pytest.mark.parametrize("form,B,K,N,q_start,kv_start", SPLIT_COMBINE_CASES)
def test_hopper_split_combine_cuda(monkeypatch, form, B, K, N, q_start, kv_start):
    """Decode's splits combined by the combine kernel, 4 x 128 threads per (row, head) (2-4 splits only
    with LCATTN_ATTN_FUSED_COMBINE=0): the reference's result (sinks that take nothing or almost
    all), repeatable bitwise, and the combine kernel is the one that ran."""
    monkeypatch.setenv("LCATTN_ATTN_FUSED_COMBINE", "0")
    q, kv, kvs, qs, ckv, sink, f = make_attention(B, 1, 64, 512, 64, 128, N, q_start, kv_start, "cuda")
    sink[:8], sink[8:16] = float("-inf"), 30.0
    if form == "sparse":
        idx = random_indices(B, 1, K, N, "cuda")
        idx[-1] = -1  # the last sequence's window starts after its query: no key at all
        def run():
            return ops.sparse_attn(q, kv, kvs, qs, ckv, idx, sink, f)
        ref = reference.attention(q, kv, kvs, qs, ckv, sink, f, indices=idx)
    else:
        def run():
            return ops.dense_attn(q, kv, kvs, qs, ckv, sink, f, ratio=128)
        ref = reference.attention(q, kv, kvs, qs, ckv, sink, f, ratio=128)
    out, kernels = run_and_kernels(run)
    if kernels:
        assert "attention_combine_kernel" in kernels, kernels
    check(*out, *ref)
    again = run()
    assert torch.equal(out[0], again[0]) and torch.equal(out[1], again[1])
    if form == "sparse":
        assert torch.equal(out[0][-1], torch.zeros_like(out[0][-1])) and bool((out[1][-1] == float("-inf")).all())


@pytest.mark.cuda
@pytest.mark.parametrize("splits", [2, 3, 4, 9])
@pytest.mark.parametrize("form", ["sparse", "dense128"])
@pytest.mark.parametrize("pair", ["0", "1"])
def test_hopper_fused_combine_cuda(monkeypatch, splits, form, pair):
    """By default the last split of each query combines the splits itself (2 to 4 splits; 9 keeps the
    combine kernel, as LCATTN_ATTN_FUSED_COMBINE=0 does), forced with LCATTN_ATTN_SPLITS: the
    reference's result, a row with no key, sinks that take nothing or almost all, repeatable bitwise,
    no combine kernel where it fuses, and within rounding of the combine kernel's result; in version
    4 and version 6 (LCATTN_ATTN_PAIR=1)."""
    monkeypatch.setenv("LCATTN_ATTN_PAIR", pair)
    B, K, N, q_start, kv_start = 3, 512, 700, [2700, 130, 5], [2573, 3, 6]
    q, kv, kvs, qs, ckv, sink, f = make_attention(B, 1, 64, 512, 64, 128, N, q_start, kv_start, "cuda")
    sink[:8], sink[8:16] = float("-inf"), 30.0
    idx = random_indices(B, 1, K, N, "cuda")
    idx[-1] = -1  # the last sequence sees no key

    def run():
        if form == "sparse":
            return ops.sparse_attn(q, kv, kvs, qs, ckv, idx, sink, f)
        return ops.dense_attn(q, kv, kvs, qs, ckv, sink, f, ratio=128)
    ref = (reference.attention(q, kv, kvs, qs, ckv, sink, f, indices=idx) if form == "sparse"
           else reference.attention(q, kv, kvs, qs, ckv, sink, f, ratio=128))
    monkeypatch.setenv("LCATTN_ATTN_SPLITS", str(splits))
    monkeypatch.setenv("LCATTN_ATTN_FUSED_COMBINE", "0")
    separate = run()
    monkeypatch.delenv("LCATTN_ATTN_FUSED_COMBINE")
    out, kernels = run_and_kernels(run)
    if kernels:
        assert ("attention_combine_kernel" in kernels) == (splits > 4), kernels
        assert ("attention_sm90_pair_kernel" in kernels) == (pair == "1"), kernels
    check(*out, *ref)
    again = run()
    assert torch.equal(out[0], again[0]) and torch.equal(out[1], again[1])
    assert_close(out[0].float(), separate[0].float(), 1e-2, "out")
    assert_close(out[1], separate[1], 1e-5, "lse")
    if form == "sparse":
        assert torch.equal(out[0][-1], torch.zeros_like(out[0][-1])) and bool((out[1][-1] == float("-inf")).all())


@pytest.mark.cuda
@pytest.mark.parametrize("form", ["sparse", "dense128", "kv_fp8"])
@pytest.mark.parametrize("H", [64, 128])
@pytest.mark.parametrize("quarter", [False, True])
def test_hopper_cluster_combine_cuda(monkeypatch, form, H, quarter):
    """By default (LCATTN_ATTN_CLUSTER_SPLITS=0 turns it off) a decode batch of (row, head group) items
    that the split rule gives one split each (more than a quarter of the SMs) or two (a quarter), and
    few enough for two CTAs each in one wave, runs two splits a query, whose two CTAs, a cluster,
    combine through distributed shared memory: the reference's result (a sequence with no key, dense:
    one whose second split has no key block, sinks that take nothing or almost all), repeatable
    bitwise, in both schedules (bf16 by keys, kv_fp8 by dims), no combine kernel; and within rounding
    of the split rule's result (the switch off)."""
    for name in ("LCATTN_ATTN_SCHEDULE", "LCATTN_ATTN_PAIR", "LCATTN_ATTN_SPLITS", "LCATTN_ATTN_FUSED_COMBINE",
                 "LCATTN_ATTN_CLUSTER_SPLITS"):
        monkeypatch.delenv(name, raising=False)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    B = (sms // 4 if quarter else sms // 2 - 4) // (H // 64)  # items: 33 or 62 of 132 SMs
    N = 900
    q_start = [int(p) for p in torch.randint(128, 128 * N, (B,))]
    q_start[-2:] = [40, 5]
    kv_start = [p - 127 for p in q_start[:-1]] + [6]  # the last sequence has no window row (and no entry)
    q, kv, kvs, qs, ckv, sink, f = make_attention(B, 1, H, 512, 64, 128, N, q_start, kv_start, "cuda")
    for first in (0, 32):  # heads that either CTA finishes
        sink[first:first + 8], sink[first + 8:first + 16] = float("-inf"), 30.0
    idx = random_indices(B, 1, 512, N, "cuda")
    idx[-1] = -1
    values = ckv
    if form == "kv_fp8":
        ckv = ops.quantize_kv_fp8(ckv.float(), 64)
        values = ops.dequantize_kv_fp8(ckv, 512, 64)
    if form == "dense128":  # position 40: 41 window rows, no entry: one key block, none in the second split
        run = lambda: ops.dense_attn(q, kv, kvs, qs, ckv, sink, f, ratio=128)  # noqa: E731
        ref = reference.attention(q, kv, kvs, qs, values, sink, f, ratio=128)
    else:
        run = lambda: ops.sparse_attn(q, kv, kvs, qs, ckv, idx, sink, f)  # noqa: E731
        ref = reference.attention(q, kv, kvs, qs, values, sink, f, indices=idx)
    monkeypatch.setenv("LCATTN_ATTN_CLUSTER_SPLITS", "0")
    by_rule = run()  # one split, or two with the fused combine
    monkeypatch.delenv("LCATTN_ATTN_CLUSTER_SPLITS")
    out, kernels = run_and_kernels(run)
    if kernels:
        fp8 = form == "kv_fp8"
        assert ran_sm90_kernel(kernels, fp8, "dims" if fp8 else "keys", cluster=True), kernels
        assert "attention_combine_kernel" not in kernels, kernels
    check(*out, *ref)
    again = run()
    assert torch.equal(out[0], again[0]) and torch.equal(out[1], again[1])
    assert_close(out[0].float(), by_rule[0].float(), 1e-2, "out")
    assert_close(out[1], by_rule[1], 1e-5, "lse")
    assert torch.equal(out[0][-1], torch.zeros_like(out[0][-1])) and bool((out[1][-1] == float("-inf")).all())


@pytest.mark.cuda
@pytest.mark.skipif(os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING") == "1",
                    reason="graph capture allocates through the caching allocator")
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("schedule", ["dims", "keys", "pair"])
def test_hopper_decode_replays_in_cuda_graph_cuda(monkeypatch, fused, schedule):
    """Decode captured once at a fixed batch, replayed on new inputs and positions: no host sync; also
    with the fused combine, the default for 2 to 4 splits (its counters zeroed in the graph), in both
    schedules of the math warpgroups and in version 6 (LCATTN_ATTN_PAIR=1)."""
    for name, value in SCHEDULES[schedule].items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LCATTN_ATTN_FUSED_COMBINE", "1" if fused else "0")
    monkeypatch.setenv("LCATTN_ATTN_SPLITS", "3" if fused else "0")  # 5 by default: more than it fuses
    B, H, K, N = 6, 64, 512, 700
    pos = lambda: [int(p) for p in torch.randint(128, 4 * N, (B,))]  # noqa: E731
    q, kv, kvs, qs, ckv, sink, f = make_attention(B, 1, H, 512, 64, 128, N, pos(), [0] * B, "cuda")
    idx = random_indices(B, 1, K, N, "cuda")
    args = (q, kv, kvs, qs, ckv, idx, sink, f)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        ops.sparse_attn(*args)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = ops.sparse_attn(*args)
    for _ in range(2):
        p = torch.tensor(pos(), dtype=torch.int32, device="cuda")
        qs.copy_(p)
        kvs.copy_(p - 127)
        for t in (q, kv, ckv):
            t.copy_(torch.randn_like(t, dtype=torch.float32))
        idx.copy_(random_indices(B, 1, K, N, "cuda"))
        graph.replay()
        check(out, lse, *reference.attention(q, kv, kvs, qs, ckv, sink, f, indices=idx))


def test_empty_inputs(device):
    q, kv, kvs, qs, ckv, sink, f = make_attention(2, 0, 4, 64, 16, 5, 3, [0, 9], [0, 4], device)
    out, lse = ops.dense_attn(q, kv, kvs, qs, ckv, sink, f, ratio=4)
    assert out.shape == (2, 0, 4, 64) and lse.shape == (2, 0, 4)
    idx = torch.empty(2, 0, 7, dtype=torch.int32, device=device)
    assert ops.sparse_attn(q, kv, kvs, qs, ckv, idx, sink, f)[0].shape == (2, 0, 4, 64)


def test_all_indices_invalid_is_window_only(device):
    q, kv, kvs, qs, ckv, sink, f = make_attention(2, 4, 2, 64, 16, 20, 6, [16, 0], [0, 0], device)
    idx = torch.full((2, 4, 5), -1, dtype=torch.int32, device=device)
    sparse = ops.sparse_attn(q, kv, kvs, qs, ckv, idx, sink, f)
    window = ops.dense_attn(q, kv, kvs, qs, ckv, sink, f, ratio=0)
    assert torch.equal(sparse[0], window[0]) and torch.equal(sparse[1], window[1])
    check(*window, *reference.attention(q, kv, kvs, qs, ckv, sink, f))
    empty = ckv[:, :0].contiguous()
    out, lse = ops.sparse_attn(q, kv, kvs, qs, empty, idx[..., :0].contiguous(), sink, f)
    assert torch.equal(out, window[0])


def test_every_logit_minus_inf_is_no_key(device):
    inf, nan = float("inf"), float("nan")
    # q[..., 0] = -inf against keys whose dim 0 is positive: every logit of those heads is -inf, which
    # SPEC 5 treats as a query with no key (output 0, lse -inf); the other heads as usual.
    q, kv, kvs, qs, ckv, sink, f = make_attention(2, 3, 4, 64, 16, 20, 6, [16, 0], [0, 0], device)
    kv[..., 0], ckv[..., 0] = 1.0, 1.0
    q[:, :, 1:3, 0] = float("-inf")
    idx = random_indices(2, 3, 4, 6, device, invalid=0.0)
    for out, lse in [ops.sparse_attn(q, kv, kvs, qs, ckv, idx, sink, f),
                     ops.dense_attn(q, kv, kvs, qs, ckv, sink, f, ratio=4)]:
        assert torch.equal(out[:, :, 1:3], torch.zeros_like(out[:, :, 1:3]))
        assert torch.equal(lse[:, :, 1:3], torch.full_like(lse[:, :, 1:3], float("-inf")))
        assert out[:, :, [0, 3]].abs().sum() > 0
    check(*ops.sparse_attn(q, kv, kvs, qs, ckv, idx, sink, f),
          *reference.attention(q, kv, kvs, qs, ckv, sink, f, indices=idx))
    check(*ops.dense_attn(q, kv, kvs, qs, ckv, sink, f, ratio=4),
          *reference.attention(q, kv, kvs, qs, ckv, sink, f, ratio=4))
    # A -inf key adds nothing; a NaN q makes every logit NaN, and the output and lse NaN (on CUDA the
    # general kernel: head dim 4).
    q = torch.tensor([[-inf, 0, 0, 1.0], [nan, 0, 0, 0]], device=device).view(1, 1, 2, 4).bfloat16()
    kv = torch.tensor([[1.0, 0, 0, -inf], [1.0, 2, 3, 4]], device=device).view(1, 2, 4).bfloat16()
    kv_start, q_start = torch.tensor([[0], [1]], dtype=torch.int32, device=device)
    args = (q, kv, kv_start, q_start, kv, torch.zeros(2, device=device), torch.zeros(0, device=device))
    out, lse = ops.dense_attn(*args, ratio=1)
    ref_out, ref_lse = reference.attention(*args, ratio=1)
    assert torch.equal(out[0, 0, 0], torch.zeros_like(out[0, 0, 0])) and lse[0, 0, 0] == -inf
    assert out[0, 0, 1].isnan().all() and lse[0, 0, 1].isnan()
    assert ref_out[0, 0, 1].isnan().all() and ref_lse[0, 0, 1].isnan()
    assert torch.equal(ref_out[0, 0, 0], out[0, 0, 0].float()) and ref_lse[0, 0, 0] == -inf


def test_repeat_runs_are_bitwise_identical(device):
    q, kv, kvs, qs, ckv, sink, f = make_attention(1, 3, 8, 512, 64, 130, 50, [140], [12], device)
    idx = random_indices(1, 3, 32, 50, device)
    first = ops.sparse_attn(q, kv, kvs, qs, ckv, idx, sink, f)
    for _ in range(3):
        again = ops.sparse_attn(q, kv, kvs, qs, ckv, idx, sink, f)
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_bad_input_is_rejected(device):
    q, kv, kvs, qs, ckv, sink, f = make_attention(1, 2, 2, 64, 16, 10, 6, [8], [0], device)
    idx = random_indices(1, 2, 3, 6, device)
    past = idx.clone()
    past[0, 1, 2] = 6  # one index past the pool (random ones may all be -1)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] sparse_attn: indices values must lie in \[-1, 5\]"):
        ops.sparse_attn(q, kv, kvs, qs, ckv, past, sink, f)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] sparse_attn: q must be BFloat16, got Float"):
        ops.sparse_attn(q.float(), kv, kvs, qs, ckv, idx, sink, f)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] sparse_attn: kv dim 2 must be 64"):
        ops.sparse_attn(q, kv[..., :32].contiguous(), kvs, qs, ckv, idx, sink, f)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] sparse_attn: sink dim 0 must be 2"):
        ops.sparse_attn(q, kv, kvs, qs, ckv, idx, sink[:1], f)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] sparse_attn: indices must be Int"):
        ops.sparse_attn(q, kv, kvs, qs, ckv, idx.long(), sink, f)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] dense_attn: ratio \(0 = window only\) must lie in \[0, "):
        ops.dense_attn(q, kv, kvs, qs, ckv, sink, f, ratio=-1)
    # Integer arguments past int32 are rejected, not truncated (2^32 + 1 would run as 1).
    with pytest.raises(RuntimeError, match=r"\[lcattn\] dense_attn: ratio \(0 = window only\) must lie in"):
        ops.dense_attn(q, kv, kvs, qs, ckv, sink, f, ratio=2**32 + 1)
    for window in (0, 2**32, 2**32 + 1):
        with pytest.raises(RuntimeError, match=r"\[lcattn\] sparse_attn: window must lie in \[1, 2147483647\]"):
            ops.sparse_attn(q, kv, kvs, qs, ckv, idx, sink, f, window=window)
    for scale in (float("nan"), float("inf")):  # any finite scale is taken, 0 and negative ones too
        with pytest.raises(RuntimeError, match=r"\[lcattn\] dense_attn: scale must be finite"):
            ops.dense_attn(q, kv, kvs, qs, ckv, sink, f, ratio=4, scale=scale)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] dense_attn: head dim must be even and in \[2, 1024\]"):
        empty = torch.zeros(1, 2, 2, 0, device=device).bfloat16()
        ops.dense_attn(empty, kv[..., :0].contiguous(), kvs, qs, ckv[..., :0].contiguous(), sink, f[:0], ratio=4)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] dense_attn: q_start values must lie in"):
        ops.dense_attn(q, kv, kvs, -qs - 1, ckv, sink, f, ratio=4)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] sparse_attn: q must be \[B, S, H, D\], got shape"):
        ops.sparse_attn(q[0], kv, kvs, qs, ckv, idx, sink, f)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] sparse_attn: kv must have rank 3"):
        ops.sparse_attn(q, kv[0], kvs, qs, ckv, idx, sink, f)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] dense_attn: head dim must be even"):
        ops.dense_attn(q[..., :63].contiguous(), kv[..., :63].contiguous(), kvs, qs, ckv[..., :63].contiguous(),
                       sink, f[:4].contiguous(), ratio=4)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] sparse_attn: ckv dim 2 must be 88"):  # 48 + 32 + 1 -> 88
        ops.sparse_attn(q, kv, kvs, qs, torch.zeros(1, 6, 64, dtype=torch.uint8, device=device), idx, sink, f)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] dense_attn: ckv must be bfloat16 or uint8"):
        ops.dense_attn(q, kv, kvs, qs, ckv.half(), sink, f, ratio=4)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] dense_attn: q must be contiguous"):
        ops.dense_attn(q.transpose(1, 2), kv, kvs, qs, ckv, sink, f, ratio=4)
