"""Indexer scores, top-k, fused indexer + top-k and gather (SPEC 4) against the reference."""
import os

import pytest
import torch

from lcattn import ops, reference
from lcattn.testing import MODEL_SHAPES, assert_close, check_topk
from lcattn.testing.bench import capture, kernel_names


def check_indexer_topk(out, args, k):
    """indexer_topk's picks against the reference scores, where entries within twice the op's own
    scoring error of the k-th may swap (the op scores in a different summation order)."""
    ref = reference.indexer_scores(*args, ratio=4)
    mine = ops.indexer_scores(*args, ratio=4)
    finite = torch.isfinite(ref)
    assert torch.equal(finite, torch.isfinite(mine)), "visibility differs from the reference"
    err = (mine - ref)[finite].abs().max().item() if finite.any() else 0.0
    check_topk(out, ref, k, tol=2 * err)


def one_cta_topk(monkeypatch, scores, k):
    """The one-CTA top-k kernel's picks (LCATTN_TOPK_SPLIT=0): what every other CUDA top-k path must pick."""
    monkeypatch.setenv("LCATTN_TOPK_SPLIT", "0")
    picks = ops.topk_indices(scores, k)
    monkeypatch.delenv("LCATTN_TOPK_SPLIT")
    return picks


def make_indexer(B, S, N, HI, DI, device, q_start):
    q = torch.randn(B, S, HI, DI, device=device).bfloat16()
    weights = torch.randn(B, S, HI, device=device) * HI ** -0.5 * DI ** -0.5
    keys = torch.randn(B, N, DI, device=device).bfloat16()
    return q, weights, keys, torch.tensor(q_start, dtype=torch.int32, device=device)


@pytest.mark.parametrize("B,S,N,HI,DI,q_start", [
    (2, 7, 13, 4, 32, [0, 45]),        # irregular, one sequence before its first full block
    (1, 33, 70, 64, 128, [250]),       # V4 indexer heads and dim
    (3, 1, 9, 8, 16, [3, 30, 17]),     # decode: one token per sequence
    (3, 1, 1000, 64, 128, [2, 4000, 2100]),  # V4 decode (CUDA: the heads-as-M kernel), one row sees nothing
    (2, 5, 517, 40, 128, [0, 700]),    # few rows, fewer heads than the tile, entries not a tile multiple
    (1, 3, 20, 16, 512, [70]),         # general CUDA kernel past 48 KB of shared memory
])
def test_indexer_scores_match_reference(device, B, S, N, HI, DI, q_start):
    args = make_indexer(B, S, N, HI, DI, device, q_start)
    out = ops.indexer_scores(*args, ratio=4)
    assert_close(out, reference.indexer_scores(*args, ratio=4), 1e-5, "scores")


@pytest.mark.parametrize("rows,N,k", [(5, 37, 8), (3, 32768, 512), (2, 1000, 1024), (4, 300, 300), (1, 1, 1),
                                      (2, 262144, 1024)])  # the last: a 1M-token context's CSA entries
def test_topk_selects_the_best(device, rows, N, k):
    scores = torch.randn(rows, N, device=device)
    scores[0, ::3] = float("-inf")
    if N > 4:
        scores[-1, 1::4] = float("nan")
    out = ops.topk_indices(scores, k)
    check_topk(out, scores, k)
    check_topk(reference.topk_indices(scores, k), scores, k)


def test_topk_corner_cases(device):
    ties = torch.randint(0, 3, (6, 200), device=device).float()  # many equal scores
    check_topk(ops.topk_indices(ties, 17), ties, 17)
    none = torch.full((2, 50), float("-inf"), device=device)
    assert (ops.topk_indices(none, 8) == -1).all()
    nan = torch.full((2, 50), float("nan"), device=device)
    nan[1, 7] = 1.0
    out = ops.topk_indices(nan, 4).cpu()
    assert (out[0] == -1).all() and out[1].tolist() == [7, -1, -1, -1]
    empty = torch.empty(3, 0, device=device)
    assert ops.topk_indices(empty, 5).shape == (3, 5) and (ops.topk_indices(empty, 5) == -1).all()
    assert ops.topk_indices(torch.randn(0, 10, device=device), 5).shape == (0, 5)
    inf = torch.randn(1, 40, device=device)
    inf[0, 5] = float("inf")
    assert 5 in ops.topk_indices(inf, 3).tolist()[0]


@pytest.mark.parametrize("block_rows", [0, 1, 5])
def test_indexer_topk_matches_scores_then_topk(device, block_rows):
    args = make_indexer(2, 13, 60, 8, 32, device, [0, 200])
    out = ops.indexer_topk(*args, k=16, ratio=4, block_rows=block_rows)
    check_indexer_topk(out, args, 16)
    assert (out[0, :3] == -1).all(), "positions 0..2 see no entry"


@pytest.mark.parametrize("block_rows", [0, 50])
def test_indexer_topk_batch_of_sequences_head_dim_128(device, block_rows):
    """Several sequences of irregular length; with block_rows 50 the blocks cross sequences."""
    args = make_indexer(3, 70, 300, 8, 128, device, [0, 1000, 133])
    out = ops.indexer_topk(*args, k=32, ratio=4, block_rows=block_rows)
    check_indexer_topk(out, args, 32)
    assert_close(ops.indexer_scores(*args, ratio=4), reference.indexer_scores(*args, ratio=4), 1e-5, "scores")


def test_indexer_topk_model_shape(device):
    shape = MODEL_SHAPES["flash"]
    args = make_indexer(1, 3, 2048, shape["index_heads"], shape["index_dim"], device, [8190])
    out = ops.indexer_topk(*args, k=shape["index_topk"], ratio=4)
    check_indexer_topk(out, args, shape["index_topk"])


@pytest.mark.cuda
def test_indexer_topk_prefill_scale_cuda():
    shape = MODEL_SHAPES["pro"]
    args = make_indexer(1, 256, 8192, shape["index_heads"], shape["index_dim"], "cuda", [32768 - 256])
    out = ops.indexer_topk(*args, k=shape["index_topk"], ratio=4, block_rows=100)
    check_indexer_topk(out, args, shape["index_topk"])


@pytest.mark.cuda
@pytest.mark.parametrize("B,S,N,HI,q_start", [
    (1, 33, 70, 64, [250]),               # odd rows: the last pair has one row
    (2, 300, 517, 40, [0, 700]),          # fewer heads, entries not a multiple of 256, two row chunks
    (3, 70, 1000, 64, [0, 1000, 133]),    # several sequences; early rows see no entry
    (1, 513, 4100, 64, [16384 - 513]),    # prefill block of a long context
])
@pytest.mark.parametrize("kernel", ["wgmma", "mma.sync"])
def test_indexer_scores_prefill_kernels_cuda(monkeypatch, B, S, N, HI, q_start, kernel):
    """Both prefill scoring kernels for head dim 128 (wgmma with keys as M, the default; mma.sync
    with LCATTN_INDEXER_SM90=0) against the reference, and indexer_topk on each with blocks of rows
    that cross sequences."""
    monkeypatch.setenv("LCATTN_INDEXER_SM90", "0" if kernel == "mma.sync" else "1")
    args = make_indexer(B, S, N, HI, 128, "cuda", q_start)
    assert_close(ops.indexer_scores(*args, ratio=4), reference.indexer_scores(*args, ratio=4), 1e-5, "scores")
    out = ops.indexer_topk(*args, k=64, ratio=4, block_rows=50)
    check_indexer_topk(out, args, 64)


def fp8_indexer(B, S, N, HI, DI, device, q_start):
    """make_indexer's inputs in the fp8 form: q quantized per (token, head) with its scales folded
    into the weights, keys per entry (ops.quantize_e4m3); and the bf16 inputs they came from."""
    q, w, keys, qs = make_indexer(B, S, N, HI, DI, device, q_start)
    q8, q_scales = ops.quantize_e4m3(q)
    k8, key_scales = ops.quantize_e4m3(keys)
    return (q8, w * q_scales, k8, qs, key_scales), (q, w, keys, qs)


def runs_e4m3_products(device, S, DI):
    """Whether fp8 inputs take the e4m3 wgmma kernel (a prefill of 128 dims on CUDA), whose products
    add inside an instruction at about 14 bits (test_indexer_fp8_kernel_cuda: 5e-4); the other kernels
    widen e4m3 exactly."""
    return str(device) == "cuda" and S > 16 and DI == 128


def indexer_inputs(B, S, N, HI, DI, device, q_start, fp8):
    """(q, weights, keys, q_start, key_scales): fp8_indexer's fp8 form, or make_indexer's with no
    key_scales."""
    if fp8:
        return fp8_indexer(B, S, N, HI, DI, device, q_start)[0]
    return (*make_indexer(B, S, N, HI, DI, device, q_start), None)


@pytest.mark.parametrize("B,S,N,HI,DI,q_start", [
    (1, 5, 40, 8, 32, [100]),             # general CUDA kernel
    (3, 1, 1000, 64, 128, [2, 4000, 2100]),  # decode: the heads-as-M kernel
    (2, 33, 300, 64, 128, [0, 700]),      # prefill: the wgmma kernel
])
def test_indexer_fp8_form(device, B, S, N, HI, DI, q_start):
    """e4m3 q and keys with key_scales: scores as the reference computes them from the same e4m3
    values (the entry's scale after the head sum), close to the bf16 scores they quantize, and
    indexer_topk's picks by those scores."""
    (q8, w8, k8, qs, key_scales), bf16_args = fp8_indexer(B, S, N, HI, DI, device, q_start)
    mine = ops.indexer_scores(q8, w8, k8, qs, ratio=4, key_scales=key_scales)
    ref = reference.indexer_scores(q8, w8, k8, qs, ratio=4, key_scales=key_scales)
    e4m3_products = runs_e4m3_products(device, S, DI)
    assert_close(mine, ref, 5e-4 if e4m3_products else 1e-5, "fp8 scores")
    assert_close(mine, reference.indexer_scores(*bf16_args, ratio=4), 0.1, "fp8 against bf16 scores")
    out = ops.indexer_topk(q8, w8, k8, qs, k=16, ratio=4, block_rows=7, key_scales=key_scales)
    finite = torch.isfinite(ref)
    err = (mine - ref)[finite].abs().max().item() if finite.any() else 0.0
    check_topk(out, ref, 16, tol=2 * err)


@pytest.mark.cuda
@pytest.mark.parametrize("B,S,N,HI,q_start", [(2, 33, 300, 64, [0, 700]), (3, 70, 1000, 40, [0, 1000, 133]),
                                              (1, 513, 4100, 64, [16384 - 513]),
                                              (3, 1, 5000, 64, [19999, 77, 4000]), (2, 2, 700, 40, [0, 2000])])
@pytest.mark.parametrize("reads_e4m3", [True, False])
def test_indexer_fp8_kernel_cuda(monkeypatch, B, S, N, HI, q_start, reads_e4m3):
    """reads_e4m3: the kernels read e4m3 q and keys as they are, the wgmma kernel with e4m3 products
    in prefill, the heads kernel at decode (up to 16 rows per sequence), which widens them exactly as
    it stages a tile; otherwise (LCATTN_INDEXER_FP8=0) the op widens them to bf16 first. Either way
    scores as the reference computes them from the same values, and indexer_topk on them with blocks
    that cross sequences."""
    monkeypatch.setenv("LCATTN_INDEXER_FP8", "1" if reads_e4m3 else "0")
    (q8, w8, k8, qs, key_scales), _ = fp8_indexer(B, S, N, HI, 128, "cuda", q_start)
    mine = ops.indexer_scores(q8, w8, k8, qs, ratio=4, key_scales=key_scales)
    ref = reference.indexer_scores(q8, w8, k8, qs, ratio=4, key_scales=key_scales)
    # Hopper's fp8 wgmma adds the products inside an instruction at about 14 bits (DeepSeek-V3
    # report), about 6e-5 relative per dot product.
    assert_close(mine, ref, 5e-4 if reads_e4m3 and S > 16 else 1e-5, "e4m3 kernel scores")
    out = ops.indexer_topk(q8, w8, k8, qs, k=64, ratio=4, block_rows=50, key_scales=key_scales)
    finite = torch.isfinite(ref)
    check_topk(out, ref, 64, tol=2 * (mine - ref)[finite].abs().max().item())


@pytest.mark.cuda
@pytest.mark.parametrize("B,S,N,HI,q_start", [
    (1, 33, 70, 64, [250]),               # odd rows: the last pair has one row; one key block
    (3, 70, 1000, 64, [0, 1000, 133]),    # several sequences; early rows see no entry
    (1, 513, 4100, 64, [16384 - 513]),    # prefill block of a long context
    (2, 300, 517, 40, [0, 700]),          # fewer heads: cp.async either way
])
@pytest.mark.parametrize("fp8", [False, True])
def test_indexer_q_tma_cuda(monkeypatch, B, S, N, HI, q_start, fp8):
    """The prefill scoring kernel takes the same products in the same order with q by TMA (the
    default for 64 heads; fewer heads keep cp.async) as with q by cp.async (LCATTN_INDEXER_Q_TMA=0),
    so gives the same scores and picks bit for bit, whole and in blocks of rows that cross
    sequences; and the reference's."""
    q, w, keys, qs, key_scales = indexer_inputs(B, S, N, HI, 128, "cuda", q_start, fp8)

    def scores_and_picks():
        scores = ops.indexer_scores(q, w, keys, qs, ratio=4, key_scales=key_scales)
        return scores, ops.indexer_topk(q, w, keys, qs, k=64, ratio=4, block_rows=50, key_scales=key_scales)

    monkeypatch.setenv("LCATTN_INDEXER_Q_TMA", "0")
    want, want_picks = scores_and_picks()
    monkeypatch.setenv("LCATTN_INDEXER_Q_TMA", "1")
    got, got_picks = scores_and_picks()
    ran = [k for k in kernel_names(scores_and_picks).splitlines() if "indexer_scores_sm90_kernel" in k]
    # The kernel's template flags <element, q by TMA>: TMA only with 64 heads.
    assert all((", true>" in k) == (HI == 64) for k in ran), ran  # ran is empty under compute-sanitizer
    assert torch.equal(got.view(torch.int32), want.view(torch.int32)), "scores differ with TMA"
    assert torch.equal(got_picks, want_picks)
    ref = reference.indexer_scores(q, w, keys, qs, ratio=4, key_scales=key_scales)
    assert_close(got, ref, 5e-4 if fp8 else 1e-5, "scores")


@pytest.mark.parametrize("B,S,N,HI,DI,q_start,fp8", [
    (2, 7, 13, 4, 32, [0, 45], False),
    (3, 1, 1000, 64, 128, [2, 4000, 2100], False),  # decode: one token per sequence
    (1, 33, 300, 64, 128, [1200], False),
    (1, 33, 300, 64, 128, [1200], True),            # the fp8 form
])
def test_indexer_nan_inputs(device, B, S, N, HI, DI, q_start, fp8):
    """A NaN in one head of one query row makes that row's visible scores NaN, and a NaN in one key
    makes its visible scores NaN, as in the reference (ReLU keeps NaN); every other score stays, and
    the picks skip the NaN scores."""
    q, w, keys, qs, key_scales = indexer_inputs(B, S, N, HI, DI, device, q_start, fp8)
    q[B // 2, S // 2, 1, 3] = float("nan")
    keys[B - 1, 5, 2] = float("nan")
    mine = ops.indexer_scores(q, w, keys, qs, ratio=4, key_scales=key_scales)
    ref = reference.indexer_scores(q, w, keys, qs, ratio=4, key_scales=key_scales)
    assert torch.isnan(ref[B // 2, S // 2]).any() and torch.isnan(ref[B - 1, :, 5]).any()  # both seen
    e4m3_products = fp8 and runs_e4m3_products(device, S, DI)
    assert_close(mine, ref, 5e-4 if e4m3_products else 1e-5, "scores")
    picks = ops.indexer_topk(q, w, keys, qs, k=16, ratio=4, block_rows=7, key_scales=key_scales)
    finite = torch.isfinite(ref)
    check_topk(picks, ref, 16, tol=2 * (mine - ref)[finite].abs().max().item())


@pytest.mark.cuda
def test_indexer_misaligned_inputs_cuda():
    """A contiguous view that starts off a 16-byte boundary gets an [lcattn] error, not a misaligned
    vector load (which would end the CUDA context)."""
    q, w, keys, qs = make_indexer(1, 20, 300, 64, 128, "cuda", [1000])
    flat = torch.empty(keys.numel() + 3, dtype=keys.dtype, device="cuda")
    shifted = flat[3:].view(keys.shape)
    shifted.copy_(keys)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] indexer_scores: keys must start on a 16-byte boundary"):
        ops.indexer_scores(q, w, shifted, qs)
    assert torch.isfinite(ops.indexer_scores(q, w, keys, qs)).any()  # the context is still usable


def test_indexer_key_scales_on_bf16(device):
    """key_scales also scale bf16 keys' scores (entry by entry, after the head sum)."""
    args = make_indexer(2, 9, 50, 8, 32, device, [0, 150])
    key_scales = torch.rand(2, 50, device=device)
    assert_close(ops.indexer_scores(*args, ratio=4, key_scales=key_scales),
                 reference.indexer_scores(*args, ratio=4) * key_scales[:, None, :], 1e-5, "scaled scores")


def test_indexer_fp8_bad_input(device):
    (q8, w8, k8, qs, key_scales), (q, w, keys, _) = fp8_indexer(1, 3, 20, 4, 16, device, [40])
    with pytest.raises(RuntimeError, match=r"\[lcattn\] indexer_scores: e4m3 q and keys need key_scales \[B, N\]"):
        ops.indexer_scores(q8, w8, k8, qs)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] indexer_topk: keys must be Float8_e4m3fn, got BFloat16"):
        ops.indexer_topk(q8, w8, keys, qs, k=4, key_scales=key_scales)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] indexer_scores: key_scales dim 1 must be 20"):
        ops.indexer_scores(q8, w8, k8, qs, key_scales=key_scales[:, :5].contiguous())
    with pytest.raises(RuntimeError, match=r"\[lcattn\] indexer_scores: key_scales must be Float"):
        ops.indexer_scores(q, w, keys, qs, key_scales=key_scales.double())


def test_quantize_e4m3_round_trip(device):
    """Each row's largest magnitude maps to 448 and back to within e4m3 rounding (3 mantissa bits);
    a zero row gets the floor scale and stays zero."""
    x = torch.randn(5, 7, 128, device=device) * torch.logspace(-3, 3, 7, device=device)[:, None]
    x[0, 0] = 0
    x8, scales = ops.quantize_e4m3(x)
    assert x8.dtype == torch.float8_e4m3fn and scales.shape == (5, 7)
    back = x8.float() * scales[..., None]
    assert ((back - x).abs() <= x.abs() * 2 ** -4 + scales[..., None] * 2 ** -9).all()
    assert (x8.float().abs().amax(-1)[1:] == 448).all() and (x8[0, 0].float() == 0).all()


def test_empty_inputs(device):
    q, w, keys, q_start = make_indexer(2, 0, 8, 2, 16, device, [0, 5])
    assert ops.indexer_scores(q, w, keys, q_start).shape == (2, 0, 8)
    assert ops.indexer_topk(q, w, keys, q_start, k=4).shape == (2, 0, 4)
    q, w, keys, q_start = make_indexer(1, 3, 0, 2, 16, device, [40])
    assert ops.indexer_scores(q, w, keys, q_start).shape == (1, 3, 0)
    assert (ops.indexer_topk(q, w, keys, q_start, k=4) == -1).all()
    pool = torch.randn(1, 0, 8, device=device)
    idx = torch.full((1, 2, 3), -1, dtype=torch.int32, device=device)
    assert (ops.gather_rows(pool, idx) == 0).all()


def test_gather_rows(device):
    pool = torch.randn(2, 9, 24, device=device).bfloat16()
    idx = torch.randint(-1, 9, (2, 5, 7), dtype=torch.int32, device=device)
    idx[1] = -1
    out = ops.gather_rows(pool, idx)
    assert torch.equal(out.cpu(), reference.gather_rows(pool, idx).cpu())
    assert (out[1] == 0).all()
    assert torch.equal(ops.gather_rows(pool.float(), idx).cpu(), reference.gather_rows(pool.float(), idx).cpu())


def test_bad_input_is_rejected(device):
    q, w, keys, q_start = make_indexer(1, 4, 8, 2, 16, device, [0])
    with pytest.raises(RuntimeError, match=r"\[lcattn\] indexer_scores: q must be BFloat16, got Float"):
        ops.indexer_scores(q.float(), w, keys, q_start)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] indexer_scores: keys dim 2 must be 16"):
        ops.indexer_scores(q, w, keys[..., :8].contiguous(), q_start)
    for ratio in (0, 2**32, 2**32 + 4):  # not truncated to 0 (a division by zero) or 4
        with pytest.raises(RuntimeError, match=r"\[lcattn\] indexer_topk: ratio must lie in \[1, 2147483647\]"):
            ops.indexer_topk(q, w, keys, q_start, k=4, ratio=ratio)
        with pytest.raises(RuntimeError, match=r"\[lcattn\] indexer_scores: ratio must lie in \[1, 2147483647\]"):
            ops.indexer_scores(q, w, keys, q_start, ratio=ratio)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] indexer_scores: DI must lie in \[0, 4096\], got 8192"):
        ops.indexer_scores(torch.zeros(1, 1, 1, 8192, device=device).bfloat16(), w[:, :1, :1].contiguous(),
                           torch.zeros(1, 2, 8192, device=device).bfloat16(), q_start)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] topk_indices: scores must be Float"):
        ops.topk_indices(torch.randn(2, 5, device=device).half(), 2)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] topk_indices: k must lie in"):
        ops.topk_indices(torch.randn(2, 5, device=device), -1)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] gather_rows: indices values must lie in \[-1, 8\]"):
        ops.gather_rows(torch.randn(1, 9, 4, device=device), torch.tensor([[[9]]], dtype=torch.int32, device=device))
    with pytest.raises(RuntimeError, match=r"\[lcattn\] gather_rows: pool elements must be a multiple of 2 bytes "
                                           r"wide, got Byte"):
        ops.gather_rows(torch.zeros(1, 9, 4, dtype=torch.uint8, device=device),
                        torch.tensor([[[1]]], dtype=torch.int32, device=device))
    with pytest.raises(RuntimeError, match=r"\[lcattn\] gather_rows: indices must be Int, got Long"):
        ops.gather_rows(torch.randn(1, 9, 4, device=device), torch.tensor([[[1]]], device=device))
    if device.type == "cuda":
        with pytest.raises(RuntimeError, match=r"\[lcattn\] gather_rows: indices must be on"):
            ops.gather_rows(torch.randn(1, 9, 4, device=device), torch.tensor([[[1]]], dtype=torch.int32))


@pytest.mark.cuda
@pytest.mark.parametrize("rows,N,k", [(1, 262144, 512), (3, 100003, 1024), (64, 32768, 512), (2, 16384, 2048),
                                      (1, 65536, 65536), (2, 1100003, 600), (300, 40000, 512),
                                      (4100, 16384, 300), (16, 262144, 512), (40, 100003, 2048),
                                      (32, 1048576, 8192)])
def test_split_topk_equals_one_block_topk_cuda(monkeypatch, rows, N, k):
    """Long rows spread over many CTAs (LCATTN_TOPK_STREAM=0; LCATTN_TOPK_SPLIT=0 turns it off): the same
    indices as the one-CTA kernel (both take tied keys in index order), on rows with ties, -inf, NaN
    and fewer candidates than k; 4100 rows run as two passes of at most 4096. 16 to 256 rows are
    filtered after round 0: the tied row overflows its chunks' slots and goes on through the rounds;
    a row in steps of 1/8 has ties within its slots; at k = 8192 a row keeps more keys than the
    finish kernel holds and goes on through the rounds too."""
    monkeypatch.setenv("LCATTN_TOPK_STREAM", "0")  # the split kernels, not the one-read one
    scores = torch.randn(rows, N, device="cuda")
    scores[0, ::5] = float("-inf")
    if rows > 1:
        scores[1] = torch.randint(0, 4, (N,), device="cuda").float()  # ties at the threshold
        scores[-1, 1::3] = float("nan")
    if rows > 3:
        scores[2] = (scores[2] * 8).round() / 8  # fewer ties, each chunk within its slots
    scores[0, : min(N, 9)] = float("inf")
    one = one_cta_topk(monkeypatch, scores, k)
    split = ops.topk_indices(scores, k)
    check_topk(split, scores, k)
    assert torch.equal(split, one)
    few = torch.full((rows, N), float("-inf"), device="cuda")
    few[:, 100:110] = 1.0  # 10 candidates: all of them, then -1
    picked = ops.topk_indices(few, k)
    assert picked[:, :10].tolist() == [list(range(100, 110))] * rows and (picked[:, 10:] == -1).all()


@pytest.mark.cuda
@pytest.mark.parametrize("rows,N,k", [(16, 262144, 512), (64, 32768, 512), (40, 100003, 2048), (20, 16384, 300),
                                      (32, 1048576, 8192)])
def test_split_topk_sampled_bound_cuda(monkeypatch, rows, N, k):
    """Filtered rows with the bound taken from a sample of the row (the default; LCATTN_TOPK_SAMPLE=0
    takes it from round 0's histogram): the same
    indices as the one-CTA kernel on normal rows, a row whose sampled runs hold its largest keys (the
    bound keeps fewer than k keys: the row goes on through the rounds), tied rows (within and past a
    chunk's slots), -inf, NaN, a row with fewer candidates than k all in the sample (bound 0: the
    finish kernel takes them all) and one with more in the sample than its rank (a bound that keeps
    fewer than k: the rounds take them all); and the sample kernel is the one that ran."""
    monkeypatch.setenv("LCATTN_TOPK_STREAM", "0")  # the split kernels, not the one-read one
    scores = torch.randn(rows, N, device="cuda")
    runs = -(-N // 256)  # runs of 256 entries; every stride-th one is sampled, at most 64 of them
    stride = max(16, -(-runs // 64))
    sampled = (torch.arange(N, device="cuda") // 256) % stride == 0
    scores[1, sampled] += 100.0  # the sample's bound is above all but a few of the row's keys
    scores[2] = torch.randint(0, 4, (N,), device="cuda").float()  # ties at the threshold, overflowing
    scores[3] = (scores[3] * 8).round() / 8  # ties within the slots
    scores[4, ::5] = float("-inf")
    scores[4, :9] = float("inf")
    scores[5, 1::3] = float("nan")
    scores[6] = float("-inf")
    scores[6, 100:110] = 1.0  # 10 candidates: all of them, then -1
    scores[7] = float("-inf")
    scores[7, :200] = torch.randn(200, device="cuda")  # in sampled run 0
    one = one_cta_topk(monkeypatch, scores, k)
    monkeypatch.setenv("LCATTN_TOPK_SAMPLE", "1")
    sampled_pick = ops.topk_indices(scores, k)
    check_topk(sampled_pick, scores, k)
    assert torch.equal(sampled_pick, one)
    again = ops.topk_indices(scores, k)
    kernels = kernel_names(lambda: ops.topk_indices(scores, k))
    assert torch.equal(again, sampled_pick)  # repeatable
    if kernels:  # none under compute-sanitizer
        assert "topk_sample_kernel" in kernels, kernels


@pytest.mark.cuda
@pytest.mark.skipif(os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING") == "1",
                    reason="graph capture allocates through the caching allocator")
@pytest.mark.parametrize("rows,sample", [(5, "0"), (20, "0"), (20, "1")])
def test_split_topk_graph_replay_cuda(monkeypatch, rows, sample):
    """The split top-k replayed in a CUDA graph with new scores each time (its counters start from
    zero on every replay) picks what an eager call picks; at 20 rows filtered from a sampled bound
    (the default) or after round 0 (LCATTN_TOPK_SAMPLE=0)."""
    monkeypatch.setenv("LCATTN_TOPK_STREAM", "0")  # the split kernels, not the one-read one
    monkeypatch.setenv("LCATTN_TOPK_SAMPLE", sample)
    scores = torch.randn(rows, 70000, device="cuda")
    graph, picked = capture(lambda: ops.topk_indices(scores, 512))
    for step in range(4):
        scores.copy_(torch.randn(rows, 70000, device="cuda"))
        if step == 2:
            scores[3] = torch.randint(0, 3, (70000,), device="cuda").float()  # ties
        graph.replay()
        assert torch.equal(picked, ops.topk_indices(scores, 512)), step
        check_topk(picked, scores, 512)


@pytest.mark.cuda
@pytest.mark.parametrize("stream", ["0", "1"])
def test_split_topk_in_indexer_decode_cuda(monkeypatch, stream):
    """indexer_topk at decode (a row per sequence, 64K entries) picks the same entries with the one-CTA
    top-k as with the split one (LCATTN_TOPK_STREAM=0) and the one-read one (forced by =1: four rows
    are too few for it by default)."""
    monkeypatch.setenv("LCATTN_TOPK_STREAM", stream)
    shape = MODEL_SHAPES["flash"]
    args = make_indexer(4, 1, 65536, shape["index_heads"], shape["index_dim"], "cuda", [262140, 100000, 5000, 3])
    monkeypatch.setenv("LCATTN_TOPK_SPLIT", "0")
    one = ops.indexer_topk(*args, k=shape["index_topk"], ratio=4)
    monkeypatch.delenv("LCATTN_TOPK_SPLIT")
    assert torch.equal(ops.indexer_topk(*args, k=shape["index_topk"], ratio=4), one)


def fused_and_unfused(monkeypatch, args, k, **kw):
    """indexer_topk with LCATTN_INDEXER_FUSED_TOPK=1, and without (scores, then top-k), and the
    kernels the fused call ran (none under compute-sanitizer)."""
    monkeypatch.setenv("LCATTN_INDEXER_FUSED_TOPK", "1")
    fused = ops.indexer_topk(*args, k=k, ratio=4, **kw)
    kernels = kernel_names(lambda: ops.indexer_topk(*args, k=k, ratio=4, **kw))
    again = ops.indexer_topk(*args, k=k, ratio=4, **kw)
    assert torch.equal(again, fused)  # repeatable
    monkeypatch.delenv("LCATTN_INDEXER_FUSED_TOPK")
    return fused, ops.indexer_topk(*args, k=k, ratio=4, **kw), kernels


@pytest.mark.cuda
@pytest.mark.parametrize("B,S,N,HI,q_start,k", [
    (1, 33, 70, 64, [250], 64),                 # odd rows: the last pair has one; rows with fewer entries than k
    (2, 300, 517, 40, [0, 700], 64),            # fewer heads, entries not a multiple of 256, rows that see nothing
    (3, 70, 1000, 64, [0, 1000, 133], 512),     # several sequences, most rows with fewer entries than k
    (1, 513, 4100, 64, [16384 - 513], 512),     # V4-Flash's k: each buffer cut once
    (1, 40, 20000, 64, [80000 - 40], 1024),     # V4-Pro's k
    (1, 18, 262144, 64, [1048576 - 18], 512),   # 1M context: 1024 key tiles a pair
    (1, 18, 1048576, 64, [4194304 - 18], 512),  # the most entries it takes: the bitmap full
])
@pytest.mark.parametrize("fp8", [False, True])
def test_indexer_topk_fused_cuda(monkeypatch, B, S, N, HI, q_start, k, fp8):
    """Scoring fused with the top-k (LCATTN_INDEXER_FUSED_TOPK=1) picks what scoring then top-k picks:
    the same scores, ties to the lower index; the k best by the reference's scores; repeatable; and
    the fused kernel is the one that ran."""
    *args, key_scales = indexer_inputs(B, S, N, HI, 128, "cuda", q_start, fp8)
    kw = {"key_scales": key_scales} if fp8 else {}
    fused, unfused, kernels = fused_and_unfused(monkeypatch, args, k, **kw)
    mine = ops.indexer_scores(*args, ratio=4, **kw)
    ref = reference.indexer_scores(*args, ratio=4, **kw)
    finite = torch.isfinite(ref)
    check_topk(fused, ref, k, tol=2 * (mine - ref)[finite].abs().max().item())  # the contract first
    assert torch.equal(fused, unfused), "picks differ from scoring then top-k: the scores' bits differ"
    if kernels:
        assert "indexer_topk_sm90_kernel" in kernels and "topk_kernel" not in kernels, kernels


@pytest.mark.cuda
def test_indexer_topk_fused_corner_cases_cuda(monkeypatch):
    """The same picks as scoring then top-k on: tied scores (every entry of sequence 0 alike: the
    lowest indices, through cuts and across both buffers), +inf ties (each key of sequence 1 all of
    one sign against a q near the bf16 maximum: +inf or 0), NaN scores (one negative head weight
    against those +inf products), a row whose scores are all NaN (a NaN head weight: all -1); the
    largest k the fused kernel takes (1280), and past it scoring then top-k."""
    q, w, keys, qs = make_indexer(2, 40, 3000, 64, 128, "cuda", [12000, 12000])
    keys[0] = keys[0, 0]
    signs = torch.randint(0, 2, (3000, 1), device="cuda") * 2 - 1
    keys[1] = keys[1].abs() * signs
    q[1, 4:6] = 3e38
    w[1, 4:6] = w[1, 4:6].abs()
    w[1, 5, 7] = -w[1, 5, 7]
    w[1, 3, 5] = float("nan")
    fused, unfused, _ = fused_and_unfused(monkeypatch, (q, w, keys, qs), 512)
    assert torch.equal(fused, unfused)
    assert (fused[0] == torch.arange(512, device="cuda")).all()  # every row sees 3000 tied entries
    assert (fused[1, 3] == -1).all()
    scores = ops.indexer_scores(q, w, keys, qs, ratio=4)
    assert (scores[1, 4] == float("inf")).sum() > 512 and torch.isnan(scores[1, 5]).any()
    assert fused[1, 4].tolist() == torch.nonzero(signs[:, 0] > 0)[:512, 0].tolist()  # the first +inf ties
    check_topk(fused[1], scores[1], 512)
    for k, fuses in [(1280, True), (1281, False)]:
        got, want, kernels = fused_and_unfused(monkeypatch, (q, w, keys, qs), k)
        assert torch.equal(got, want), k
        if kernels:
            assert ("indexer_topk_sm90_kernel" in kernels) == fuses, kernels


@pytest.mark.cuda
@pytest.mark.skipif(os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING") == "1",
                    reason="graph capture allocates through the caching allocator")
def test_indexer_topk_fused_graph_replay_cuda(monkeypatch):
    """The fused kernel replayed in a CUDA graph with new queries picks what an eager call picks."""
    monkeypatch.setenv("LCATTN_INDEXER_FUSED_TOPK", "1")
    q, w, keys, qs = make_indexer(1, 64, 5000, 64, 128, "cuda", [20000 - 64])
    graph, picked = capture(lambda: ops.indexer_topk(q, w, keys, qs, k=512, ratio=4))
    for step in range(3):
        q.copy_(torch.randn_like(q, dtype=torch.float32).bfloat16())
        graph.replay()
        assert torch.equal(picked, ops.indexer_topk(q, w, keys, qs, k=512, ratio=4)), step


@pytest.mark.cuda
@pytest.mark.parametrize("rows,N,k", [(1, 262144, 512), (3, 100003, 1024), (64, 32768, 512), (2, 16384, 2048),
                                      (64, 262144, 512), (300, 40000, 512), (16, 262144, 2048), (4100, 16384, 300),
                                      (5, 1100003, 600), (1, 16384, 1), (3, 50001, 1), (3, 50001, 300),
                                      (2, 393216, 512), (2, 393217, 300), (1, 4194304, 16)])
@pytest.mark.parametrize("bound", ["0", "1"])
def test_stream_topk_equals_one_block_topk_cuda(monkeypatch, rows, N, k, bound):
    """The one-read top-k (LCATTN_TOPK_STREAM=1 makes it take rows it would leave to the split
    kernels), with and without its first threshold from the first two tiles (LCATTN_TOPK_FIRST_BOUND):
    the same indices as the one-CTA kernel on rows with
    +inf, -inf, NaN and ties (a tied row cuts at one key; a row of -0.0 and +0.0; a row of one value,
    where the bound is every entry's key), a rising row (every entry beats the
    threshold: a cut a tile), a falling one and one with fewer candidates than k; rows in one part
    and in several (merged by the last CTA), the best of a row in its last part; rows of N not a
    multiple of 4 (single loads) and of a multiple (16-byte loads); a last part of one tile (50,001
    entries); more parts than threads in the merging CTA (one row of 4M entries, k = 16: 342 parts on
    132 SMs); picks written through a bitmap of the row (up to 393,216 entries: the whole buffer) and
    sorted (longer rows); repeatable, and the stream kernel is the one that ran."""
    scores = torch.randn(rows, N, device="cuda")
    scores[0, ::5] = float("-inf")
    scores[0, : min(N, 9)] = float("inf")
    if rows > 1:
        scores[1] = torch.randint(0, 4, (N,), device="cuda").float()
        scores[-1, 1::3] = float("nan")
    if rows > 4:
        scores[2] = scores[2].sort().values
        scores[3] = scores[3].sort(descending=True).values
        scores[4] = float("-inf")
        scores[4, 100:110] = 1.0
    if rows > 5:
        zero = torch.zeros(N, device="cuda")
        scores[5] = torch.where(torch.rand(N, device="cuda") < 0.5, -zero, zero)
        scores[5, ::1000] = 1.0
    if rows > 6:
        scores[6] = 0.5
    scores[-1, N - 6] = 100.0  # the row's best, in its last part
    one = one_cta_topk(monkeypatch, scores, k)
    monkeypatch.setenv("LCATTN_TOPK_STREAM", "1")
    monkeypatch.setenv("LCATTN_TOPK_FIRST_BOUND", bound)
    stream = ops.topk_indices(scores, k)
    check_topk(stream, scores, k)
    assert torch.equal(stream, one)
    kernels = kernel_names(lambda: ops.topk_indices(scores, k))
    assert torch.equal(ops.topk_indices(scores, k), stream)
    if kernels:  # none under compute-sanitizer
        assert "topk_stream_kernel" in kernels, kernels


@pytest.mark.cuda
@pytest.mark.parametrize("groups", [2, 4, 8])
@pytest.mark.parametrize("N", [16384, 16387])
def test_stream_topk_first_bound_groups_cuda(monkeypatch, groups, N):
    """The one-read top-k's first bound cuts each thread's 32 keys of the first two tiles into as many
    groups as k needs (256 threads x groups >= k). Rows of one part (400 rows), each thread with one
    5.0 in half of its groups and 0.0 elsewhere, and k one past 256 x groups / 2: with half as many
    groups every group would hold a 5.0, the bound would be 5.0 and the row's best 0.0 (the lowest
    index of them) would be dropped. Thread t's entry j of a tile is 4 (t + 256 (j // 4)) + j % 4 with
    16-byte loads (N a multiple of 4) and t + 256 j with single ones."""
    rows, k = 400, 256 * groups // 2 + 1
    slots = {2: [(0, 0)], 4: [(0, 0), (1, 0)], 8: [(0, 0), (0, 8), (1, 0), (1, 8)]}[groups]  # (tile, j)
    t = torch.arange(256)
    scores = torch.zeros(rows, N)
    for tile, j in slots:
        at = 4 * (t + 256 * (j // 4)) + j % 4 if N % 4 == 0 else t + 256 * j
        scores[:, 4096 * tile + at] = 5.0
    scores = scores.cuda()
    one = one_cta_topk(monkeypatch, scores, k)
    monkeypatch.setenv("LCATTN_TOPK_STREAM", "1")
    monkeypatch.delenv("LCATTN_TOPK_FIRST_BOUND", raising=False)
    picked = ops.topk_indices(scores, k)
    check_topk(picked, scores, k)
    assert torch.equal(picked, one)
    assert bool((picked >= 0).all())


@pytest.mark.cuda
def test_stream_topk_takes_rows_that_fill_the_sms_cuda(monkeypatch):
    """By default the one-read top-k takes rows with parts for twice the SMs (64 rows of 262,144) and
    leaves fewer (1 and 16 rows) to the split kernels, which are faster there; indexer_topk whose full
    blocks take it and whose short last block does not (the workspace sized for both) picks what the
    split path picks."""
    monkeypatch.delenv("LCATTN_TOPK_STREAM", raising=False)
    for rows, stream in ((1, False), (16, False), (64, True)):
        scores = torch.randn(rows, 262144, device="cuda")
        picked = ops.topk_indices(scores, 512)
        check_topk(picked, scores, 512)
        kernels = kernel_names(lambda s=scores: ops.topk_indices(s, 512))
        if kernels:  # none under compute-sanitizer
            assert ("topk_stream_kernel" in kernels) == stream, kernels
    args = make_indexer(1, 150, 70000, 64, 128, "cuda", [280000 - 150])
    mixed = ops.indexer_topk(*args, k=512, ratio=4, block_rows=140)  # blocks of 140 and 10 rows
    kernels = kernel_names(lambda: ops.indexer_topk(*args, k=512, ratio=4, block_rows=140))
    if kernels:  # both paths ran
        assert "topk_stream_kernel" in kernels and "topk_hist_kernel" in kernels, kernels
    monkeypatch.setenv("LCATTN_TOPK_STREAM", "0")
    assert torch.equal(mixed, ops.indexer_topk(*args, k=512, ratio=4, block_rows=140))


@pytest.mark.cuda
@pytest.mark.skipif(os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING") == "1",
                    reason="graph capture allocates through the caching allocator")
@pytest.mark.parametrize("rows,block_rows", [(1, 7), (20, 128), (500, 500)])
def test_stream_topk_graph_replay_and_indexer_cuda(monkeypatch, rows, block_rows):
    """The one-read top-k replayed in a CUDA graph with new scores (its tickets are zeroed on every
    replay) picks what an eager call picks; and indexer_topk's blocks of rows through it (a last
    block shorter than the one the workspace was sized for, which takes more parts a row) pick what
    they pick with the split top-k (LCATTN_TOPK_STREAM=0). LCATTN_TOPK_STREAM=1: every block takes it."""
    monkeypatch.setenv("LCATTN_TOPK_STREAM", "1")
    scores = torch.randn(rows, 70000, device="cuda")
    graph, picked = capture(lambda: ops.topk_indices(scores, 512))
    for step in range(3):
        scores.copy_(torch.randn(rows, 70000, device="cuda"))
        graph.replay()
        assert torch.equal(picked, ops.topk_indices(scores, 512)), step
    args = make_indexer(2, 150, 70000, 64, 128, "cuda", [280000, 300000])
    streamed = ops.indexer_topk(*args, k=512, ratio=4, block_rows=block_rows)
    monkeypatch.setenv("LCATTN_TOPK_STREAM", "0")
    assert torch.equal(streamed, ops.indexer_topk(*args, k=512, ratio=4, block_rows=block_rows))
