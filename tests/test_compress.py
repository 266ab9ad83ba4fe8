"""compress_kv (SPEC 3): one-shot, chunked and token-by-token against the reference."""
import pytest
import torch

from lcattn import ops, reference
from lcattn.modules.rope import plain_inv_freq
from lcattn.testing import assert_close

# (ratio, overlap, c, rope_dim): the three compressor instances of V4, plus a tiny one.
INSTANCES = [(4, True, 512, 64), (4, True, 128, 64), (128, False, 512, 64), (3, True, 8, 4)]


def make_inputs(B, T, ratio, overlap, c, rope_dim, device):
    width = 2 * c if overlap else c
    kv = torch.randn(B, T, width, device=device)
    score = torch.randn(B, T, width, device=device) * 2
    ape = torch.randn(ratio, width, device=device)
    norm_weight = torch.rand(c, device=device) + 0.5
    inv_freq = plain_inv_freq(160000.0, rope_dim, device)
    return kv, score, ape, norm_weight, inv_freq


def run_chunks(kv, score, ape, norm_weight, inv_freq, ratio, overlap, chunks, lengths, out_dtype=torch.float32):
    """Feeds each sequence its tokens in the given chunk sizes (a list per call, padded batch); with
    an e4m3 out_dtype returns (out, out_scales)."""
    B, T, width = kv.shape
    c = width // 2 if overlap else width
    if out_dtype == torch.uint8:  # the kv_fp8 form; 0xAB marks rows never written
        out = torch.full((B, T // ratio + 1, ops.kv_fp8_bytes(c, inv_freq.numel() * 2)), 0xAB, device=kv.device,
                         dtype=torch.uint8)
    else:
        out = torch.full((B, T // ratio + 1, c), float("nan"), device=kv.device, dtype=out_dtype)
    e4m3 = out_dtype == torch.float8_e4m3fn
    out_scales = torch.full((B, T // ratio + 1), float("nan"), device=kv.device) if e4m3 else None
    ring_kv, ring_score = ops.compress_state(B, ratio, width, overlap, kv.device)
    ring_kv.fill_(float("nan"))  # never read before written
    pos = [0] * B
    for sizes in chunks:
        S = max(sizes)
        ckv = torch.zeros(B, S, width, device=kv.device)
        csc = torch.zeros(B, S, width, device=kv.device)
        for b, n in enumerate(sizes):
            ckv[b, :n] = kv[b, pos[b]:pos[b] + n]
            csc[b, :n] = score[b, pos[b]:pos[b] + n]
        seq_lens = torch.tensor(sizes, dtype=torch.int32, device=kv.device)
        start = torch.tensor(pos, dtype=torch.int32, device=kv.device)
        ops.compress_kv(ckv, csc, seq_lens, start, ring_kv, ring_score, ape, norm_weight, inv_freq, out, ratio,
                        overlap, out_scales=out_scales)
        pos = [p + n for p, n in zip(pos, sizes)]
    assert pos == lengths
    return (out, out_scales) if e4m3 else out


def one_chunk(device, c=16, rope_dim=4):
    """compress_kv's arguments before `out` for one CSA chunk of 8 tokens (ratio 4) of width 2c."""
    kv, score, ape, w, f = make_inputs(1, 8, 4, True, c, rope_dim, device)
    ring_kv, ring_score = ops.compress_state(1, 4, 2 * c, True, device)
    lens, start = torch.tensor([8], dtype=torch.int32, device=device), torch.zeros(1, dtype=torch.int32, device=device)
    return kv, score, lens, start, ring_kv, ring_score, ape, w, f


@pytest.mark.parametrize("ratio,overlap,c,rope_dim", INSTANCES)
def test_e4m3_entries_are_the_quantized_entries(device, ratio, overlap, c, rope_dim):
    """With an e4m3 out the op writes, bit for bit, ops.quantize_e4m3 of the fp32 entries it would
    write (chunked calls), and a scale per entry."""
    lengths = [ratio * 6 + 1, ratio * 3]
    inputs = make_inputs(2, max(lengths), ratio, overlap, c, rope_dim, device)
    chunks = [[ratio + 1, 2], [ratio * 5, ratio * 3 - 2]]
    fp32 = run_chunks(*inputs, ratio, overlap, chunks, lengths)
    out, out_scales = run_chunks(*inputs, ratio, overlap, chunks, lengths, torch.float8_e4m3fn)
    for b, n in enumerate(lengths):
        want, want_scales = ops.quantize_e4m3(fp32[b, : n // ratio])
        assert torch.equal(out[b, : n // ratio].view(torch.uint8), want.view(torch.uint8)), f"sequence {b}"
        assert torch.equal(out_scales[b, : n // ratio], want_scales)
        assert torch.isnan(out_scales[b, n // ratio:]).all(), "an unfinished block produced an entry"


@pytest.mark.parametrize("ratio,overlap,c,rope_dim", INSTANCES)
def test_kv_fp8_entries_are_the_quantized_entries(device, ratio, overlap, c, rope_dim):
    """With a uint8 out the op writes, bit for bit, ops.quantize_kv_fp8 of the fp32 entries it would
    write (chunked calls), and leaves the rows of unfinished blocks alone."""
    lengths = [ratio * 6 + 1, ratio * 3]
    inputs = make_inputs(2, max(lengths), ratio, overlap, c, rope_dim, device)
    norm_weight = inputs[3]  # tiles of very different sizes after the norm: scale bytes far from 127
    norm_weight[:64] *= 1e4
    norm_weight[64:128] *= 1e-5
    chunks = [[ratio + 1, 2], [ratio * 5, ratio * 3 - 2]]
    fp32 = run_chunks(*inputs, ratio, overlap, chunks, lengths)
    out = run_chunks(*inputs, ratio, overlap, chunks, lengths, torch.uint8)
    assert out.shape[-1] == ops.kv_fp8_bytes(c, rope_dim)
    for b, n in enumerate(lengths):
        want = ops.quantize_kv_fp8(fp32[b, : n // ratio], rope_dim)
        assert torch.equal(out[b, : n // ratio], want), f"sequence {b}"
        assert (out[b, n // ratio:] == 0xAB).all(), "an unfinished block produced an entry"
    if c - rope_dim >= 128:
        scales = out[0, :lengths[0] // ratio, c - rope_dim + 2 * rope_dim:][..., :2]
        assert (scales[..., 0] >= 127 + 5).all() and (scales[..., 1] <= 127 - 5).all(), scales
    norm_weight[1] = float("nan")  # a NaN tile: its scale byte 255 and NaN values, the other tiles finite
    nan_out = run_chunks(*inputs, ratio, overlap, chunks, lengths, torch.uint8)[0, : lengths[0] // ratio]
    assert (nan_out[:, c - rope_dim + 2 * rope_dim] == 255).all()
    widened = ops.dequantize_kv_fp8(nan_out, c, rope_dim).float()
    assert widened[:, :min(64, c - rope_dim)].isnan().all() and not widened[:, min(64, c - rope_dim):].isnan().any()


def test_kv_fp8_needs_the_entry_bytes(device):
    with pytest.raises(RuntimeError, match=r"\[lcattn\] compress_kv: out dim 2 must be 24"):  # 12 + 8 + 1 -> 24
        ops.compress_kv(*one_chunk(device), torch.zeros(1, 2, 16, dtype=torch.uint8, device=device), 4, True)


@pytest.mark.cuda
def test_kv_fp8_out_on_cuda_starts_on_16_bytes():
    bytes_ = ops.kv_fp8_bytes(16, 4)
    out = torch.zeros(2 * bytes_ + 8, dtype=torch.uint8, device="cuda")[8:].view(1, 2, bytes_)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] compress_kv: out must start on a 16-byte boundary"):
        ops.compress_kv(*one_chunk("cuda"), out, 4, True)


def test_e4m3_out_needs_its_scales(device):
    args = one_chunk(device)
    out8, scales = torch.zeros(1, 2, 16, device=device).to(torch.float8_e4m3fn), torch.zeros(1, 2, device=device)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] compress_kv: out_scales \[B, N\] go with an e4m3 out"):
        ops.compress_kv(*args, out8, 4, True)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] compress_kv: out_scales \[B, N\] go with an e4m3 out"):
        ops.compress_kv(*args, torch.zeros(1, 2, 16, device=device), 4, True, out_scales=scales)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] compress_kv: out_scales dim 1 must be 2"):
        ops.compress_kv(*args, out8, 4, True, out_scales=scales[:, :1].contiguous())


@pytest.mark.parametrize("ratio,overlap,c,rope_dim", INSTANCES)
def test_one_shot_matches_reference(device, ratio, overlap, c, rope_dim):
    lengths = [ratio * 5 + 3, ratio * 2 + 1]  # not multiples of the ratio
    T = max(lengths)
    inputs = make_inputs(2, T, ratio, overlap, c, rope_dim, device)
    out = run_chunks(*inputs, ratio, overlap, [lengths], lengths)
    for b, n in enumerate(lengths):
        kv, score, ape, w, f = inputs
        ref = reference.compress_kv(kv[b:b + 1, :n], score[b:b + 1, :n], ape, w, f, ratio, overlap)[0]
        assert_close(out[b, : n // ratio], ref, 1e-5, f"entries of sequence {b}")
        assert torch.isnan(out[b, n // ratio:]).all(), "an unfinished block produced an entry"


@pytest.mark.parametrize("ratio,overlap,c,rope_dim", INSTANCES)
def test_chunked_and_decode_match_one_shot(device, ratio, overlap, c, rope_dim):
    T = ratio * 3 + 2
    inputs = make_inputs(2, T, ratio, overlap, c, rope_dim, device)
    one_shot = run_chunks(*inputs, ratio, overlap, [[T, T]], [T, T])
    # Irregular chunks that differ between the two sequences, including empty ones.
    cuts = [[1, 5], [ratio + 1, 0], [2, ratio * 2], [T - ratio - 4, T - ratio * 2 - 5]]
    chunked = run_chunks(*inputs, ratio, overlap, cuts, [T, T])
    decode = run_chunks(*inputs, ratio, overlap, [[1, 1]] * T, [T, T])
    n = T // ratio
    assert_close(chunked[:, :n], one_shot[:, :n], 1e-6, "chunked entries")
    assert_close(decode[:, :n], one_shot[:, :n], 1e-6, "decode entries")


def test_bf16_output_and_short_sequences(device):
    ratio, overlap, c = 4, True, 128
    inputs = make_inputs(2, 11, ratio, overlap, c, 64, device)
    out = run_chunks(*inputs, ratio, overlap, [[3, 11]], [3, 11], out_dtype=torch.bfloat16)
    assert torch.isnan(out[0].float()).all(), "3 tokens complete no block of 4"
    kv, score, ape, w, f = inputs
    ref = reference.compress_kv(kv[1:], score[1:], ape, w, f, ratio, overlap)[0]
    assert_close(out[1, :2].float(), ref, 1e-2, "bf16 entries")


def test_empty_chunk_changes_nothing(device):
    inputs = make_inputs(1, 4, 4, True, 8, 4, device)
    out = run_chunks(*inputs, 4, True, [[0], [4], [0]], [4])
    kv, score, ape, w, f = inputs
    assert_close(out[:, :1], reference.compress_kv(kv, score, ape, w, f, 4, True), 1e-6)


def test_bad_input_is_rejected(device):
    kv, score, ape, w, f = make_inputs(1, 8, 4, True, 8, 4, device)
    ring_kv, ring_score = ops.compress_state(1, 4, 16, True, device)
    out = torch.empty(1, 2, 8, device=device)
    ok = dict(kv=kv, score=score, seq_lens=torch.tensor([8], dtype=torch.int32, device=device),
              start_pos=torch.zeros(1, dtype=torch.int32, device=device), ring_kv=ring_kv, ring_score=ring_score,
              ape=ape, norm_weight=w, inv_freq=f, out=out, ratio=4, overlap=True)
    bad = [
        (dict(kv=kv.double()), "kv must be Float"),
        (dict(ring_kv=ring_kv[:, :4]), "ring_kv dim 1 must be 8"),
        (dict(seq_lens=torch.tensor([9], dtype=torch.int32, device=device)), "seq_lens values must lie in"),
        (dict(start_pos=torch.tensor([-1], dtype=torch.int32, device=device)), "start_pos values must lie in"),
        (dict(out=out.half()), "out must be float32, bfloat16, float8_e4m3fn or uint8"),
        (dict(ratio=0), r"ratio must lie in \[1, 1073741823\], got 0"),
        (dict(ratio=2**32), r"ratio must lie in \[1, 1073741823\]"),  # not truncated to 0
        (dict(eps=float("nan")), "eps must be finite and at least 0"),
        (dict(ring_score=ring_kv), "ring_kv and ring_score must not share memory"),
        (dict(out=ring_kv.view(-1)[:16].view(1, 2, 8)), "ring_kv and out must not share memory"),
        (dict(kv=kv[..., :15], score=score[..., :15]), "kv width must be even"),
    ]
    for change, msg in bad:
        with pytest.raises(RuntimeError, match=r"\[lcattn\] compress_kv: " + msg):
            ops.compress_kv(**{**ok, **change})
    with pytest.raises(RuntimeError, match=r"\[lcattn\] compress_kv: kv must be contiguous"):
        ops.compress_kv(**{**ok, "kv": torch.randn(1, 16, 8, device=device).transpose(1, 2)})


def test_kv_fp8_needs_an_even_width(device):
    out = torch.zeros(1, 2, 16, dtype=torch.uint8, device=device)  # the bytes 9 channels would take (7 e4m3, 2 bf16)
    with pytest.raises(RuntimeError, match=r"\[lcattn\] compress_kv: kv_fp8 entries need an even width, got 9"):
        ops.compress_kv(*one_chunk(device, c=9, rope_dim=2), out, 4, True)


def test_helpers_reject_bad_shapes():
    """compress_state and quantize_e4m3 name what is wrong instead of failing inside torch."""
    for batch, ratio, width in ((-1, 4, 8), (1, 0, 8), (1, 4, -8)):
        with pytest.raises(ValueError, match=r"\[lcattn\] compress_state: batch and width must be at least 0 and "
                                             rf"ratio at least 1, got batch {batch}, ratio {ratio}, width {width}"):
            ops.compress_state(batch, ratio, width, True)
    assert ops.compress_state(0, 4, 8, False)[0].shape == (0, 4, 8)
    for head_dim, rope_dim in ((9, 2), (16, 32), (-8, 0), (16, 3)):
        with pytest.raises(ValueError, match=r"\[lcattn\] kv_fp8_bytes: head dim and rope_dim must be even"):
            ops.kv_fp8_bytes(head_dim, rope_dim)
    assert ops.kv_fp8_bytes(512, 64) == 584
    with pytest.raises(ValueError, match=r"\[lcattn\] compress_state: width must be even when overlap"):
        ops.compress_state(2, 4, 31, True)
    assert ops.compress_state(2, 4, 31, False)[0].shape == (2, 4, 31)
    for x in (torch.zeros(2, 0), torch.tensor(1.0), torch.ones(2, 4, dtype=torch.int32)):
        with pytest.raises(ValueError, match=r"\[lcattn\] quantize_e4m3: x must be a floating-point tensor "
                                             r"\[..., D\] with D >= 1"):
            ops.quantize_e4m3(x)
    for min_amax in (0.0, -1.0, float("nan"), float("inf")):  # 0 would give an all-zero row scale 0, NaN codes
        with pytest.raises(ValueError, match=r"\[lcattn\] quantize_e4m3: min_amax must be finite and above 0"):
            ops.quantize_e4m3(torch.zeros(1, 4), min_amax)
