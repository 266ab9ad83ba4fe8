"""Decoding from a cache of fixed capacity (model.decoder): eager and CUDA-graph steps against
one-shot prefill, capacity errors, torch.compile."""
import os

import pytest
import torch
from model_helpers import rel, same_argmax, tiny_model

TOL = 1e-2  # as in test_model.py: bf16 rounding of the ops' inputs
# Over 50 decode steps a flipped discrete choice (an expert, an indexer pick) also changes the cached
# keys of later tokens: the model's own token-by-token decode drifts from one-shot prefill by up to
# 3% (median token, 12 seeds on the CPU), so that comparison takes a looser bound.
DRIFT_TOL = 5e-2
STEPS = 50
# Past the tiny model's window (16), its CSA and HCA blocks (4, 16) and the first full block, with
# the sequences of one batch at different lengths.
LENGTHS = [37, 11, 60]
needs_graph_allocator = pytest.mark.skipif(os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING") == "1",
                                           reason="graph capture allocates through the caching allocator")


def decode(model, ids, graph, chunk=8192, steps=STEPS, compile=False):
    """Logits [B, 1 + steps, vocab]: the prompts' last tokens, then each step's (teacher-forced)."""
    B = ids.shape[0]
    dec = model.decoder(B, max(LENGTHS) + steps, graph=graph, compile=compile)
    out = [dec.prefill(ids[:, :max(LENGTHS)], LENGTHS, chunk=chunk)]
    for t in range(steps):
        out.append(dec.step(torch.stack([ids[b, LENGTHS[b] + t] for b in range(B)])).clone())
    assert dec.cache.host_lengths == [n + steps for n in LENGTHS]
    assert dec.cache.lengths.tolist() == dec.cache.host_lengths
    return torch.stack(out, 1)


def assert_matches_one_shot(model, ids, logits):
    for b, n in enumerate(LENGTHS):
        full = model(ids[b:b + 1, :n + STEPS])[0, n - 1:]
        assert rel(logits[b], full) < DRIFT_TOL and same_argmax(logits[b], full) > 0.8


def model_calls(model, ids):
    """The same prompts and steps as decode(), as plain model calls on a growing cache."""
    B = ids.shape[0]
    cache = model.new_cache(B)
    out = [model(ids[:, :max(LENGTHS)], cache, lengths=LENGTHS, last=True)]
    for t in range(STEPS):
        out.append(model(torch.stack([ids[b, n + t] for b, n in enumerate(LENGTHS)])[:, None], cache)[:, 0])
    return torch.stack(out, 1)


@pytest.mark.parametrize("kv_fp8", [False, True])
def test_decoder_matches_model_calls_and_one_shot_prefill(device, kv_fp8):
    model = tiny_model(device)
    model.config.kv_fp8 = kv_fp8
    ids = torch.randint(0, model.config.vocab_size, (len(LENGTHS), max(LENGTHS) + STEPS), device=device)
    logits = decode(model, ids, graph=False)
    calls = model_calls(model, ids)
    if device.type == "cpu":  # the same ops on the same values: a fixed capacity changes nothing
        assert torch.equal(logits, calls)
    else:  # the attention kernels split keys by the entries' capacity
        assert rel(logits, calls) < TOL and same_argmax(logits, calls) > 0.9
    assert_matches_one_shot(model, ids, logits)
    chunked = decode(model, ids, graph=False, chunk=40)  # prefill in calls of 13 positions
    assert_matches_one_shot(model, ids, chunked)


@pytest.mark.cuda
@needs_graph_allocator
@pytest.mark.parametrize("kv_fp8", [False, True])
def test_graph_steps_equal_eager_steps_cuda(kv_fp8):
    """Capture raises on any host sync in the step; the replays match eager steps bitwise; also with
    the compressed entries in the kv_fp8 form (widened to bf16 in the step)."""
    model = tiny_model("cuda")
    model.config.kv_fp8 = kv_fp8
    ids = torch.randint(0, model.config.vocab_size, (len(LENGTHS), max(LENGTHS) + STEPS), device="cuda")
    replayed = decode(model, ids, graph=True)
    assert torch.equal(replayed, decode(model, ids, graph=False))
    assert_matches_one_shot(model, ids, replayed)


@pytest.mark.parametrize("graph", [False, pytest.param(True, marks=[pytest.mark.cuda, needs_graph_allocator])])
def test_full_cache_is_an_error(device, graph):
    if graph and device.type != "cuda":
        pytest.skip("CUDA graphs run on CUDA")
    model = tiny_model(device)
    dec = model.decoder(2, 12, graph=graph)
    dec.prefill(torch.randint(0, model.config.vocab_size, (2, 9), device=device), [9, 4])
    tokens = torch.zeros(2, dtype=torch.long, device=device)
    for _ in range(3):
        dec.step(tokens)
    with pytest.raises(ValueError, match=r"\[lcattn\] a sequence would pass the cache's max_context = 12"):
        dec.step(tokens)
    assert dec.cache.host_lengths == [12, 7]
    with pytest.raises(ValueError, match=r"\[lcattn\] max_context must be in"):
        model.decoder(1, model.config.max_positions + 1)


def test_decoder_rejects_bad_calls(device):
    model = tiny_model(device)
    dec = model.decoder(2, 32, graph=False)
    with pytest.raises(ValueError, match=r"\[lcattn\] the decoder holds 2 sequences"):
        dec.prefill(torch.zeros(3, 4, dtype=torch.long, device=device))
    with pytest.raises(ValueError, match=r"\[lcattn\] lengths must be 2 ints in \[0, 4\]"):
        dec.prefill(torch.zeros(2, 4, dtype=torch.long, device=device), [5, 1])
    with pytest.raises(ValueError, match=r"\[lcattn\] a sequence would pass the cache's max_context = 32"):
        dec.prefill(torch.zeros(2, 40, dtype=torch.long, device=device))
    assert dec.cache.host_lengths == [0, 0]
    with pytest.raises(ValueError, match=r"\[lcattn\] token_ids must be int64 or int32 token ids \[2\], got "
                                         r"torch.int64 \(3,\)"):
        dec.step(torch.zeros(3, dtype=torch.long, device=device))
    for ids in (torch.tensor([3.7, 100.9], device=device), torch.tensor([True, False], device=device)):
        with pytest.raises(ValueError, match=r"\[lcattn\] token_ids must be int64 or int32 token ids \[2\]"):
            dec.step(ids)  # logits' values instead of their argmax, say: not read as ids
    with pytest.raises(ValueError, match=r"\[lcattn\] input_ids must be int64 or int32 token ids \[B, S\]"):
        dec.prefill(torch.zeros(4, dtype=torch.long, device=device))
    assert dec.cache.host_lengths == [0, 0]
    with pytest.raises(ValueError, match=r"\[lcattn\] a cache holds at least 1 sequence, got batch 0"):
        model.decoder(0, 32, graph=False)
    if device.type == "cpu":
        with pytest.raises(ValueError, match=r"\[lcattn\] a CUDA graph needs"):
            model.decoder(1, 8, graph=True)


def test_compiled_decode_steps_match_eager(device):
    model = tiny_model(device, layer_types=["sliding", "csa", "hca"])
    ids = torch.randint(0, model.config.vocab_size, (len(LENGTHS), max(LENGTHS) + 4), device=device)
    compiled, eager = decode(model, ids, False, steps=4, compile=True), decode(model, ids, False, steps=4)
    assert rel(compiled, eager) < TOL and same_argmax(compiled, eager) > 0.9


def test_compiled_model_matches_eager(device):
    """torch.compile(fullgraph=True) traces prefill and decode with no graph break (lcattn's ops are
    custom ops with fake kernels) and gives the eager logits."""
    model = tiny_model(device, layer_types=["sliding", "csa", "hca"])
    compiled = torch.compile(model, fullgraph=True)
    ids = torch.randint(0, model.config.vocab_size, (2, 24), device=device)
    eager_cache, compiled_cache = model.new_cache(2, max_context=32), model.new_cache(2, max_context=32)
    wants, gots = [], []
    for part in (ids[:, :21], ids[:, 21:22], ids[:, 22:23], ids[:, 23:]):
        wants.append(model(part, eager_cache))
        gots.append(compiled(part, compiled_cache))
    # Over all 48 tokens at once: a decode part holds 2, and rounding that flips one near-tied pick (an
    # expert, an indexer entry) moves its token; alone, 1 of 2 would fail the median and the argmax share.
    want, got = torch.cat(wants, 1), torch.cat(gots, 1)
    assert rel(got, want) < TOL and same_argmax(got, want) > 0.9
    assert compiled_cache.host_lengths == eager_cache.host_lengths == [24, 24]


def test_generate(device):
    """Greedy generate gives the tokens of prefill then argmax steps, row by row; a sequence's row holds
    -1 after its eos token, also when every sequence has ended; sampling draws the same
    tokens from the same generator state, within the vocabulary; bad arguments are errors."""
    model = tiny_model(device)
    ids = torch.randint(0, model.config.vocab_size, (3, max(LENGTHS)), device=device)
    dec = model.decoder(3, max(LENGTHS) + 8, graph=False)
    logits, want = dec.prefill(ids, LENGTHS), []
    for _ in range(8):
        want.append(logits.argmax(-1))
        logits = dec.step(want[-1])
    want = torch.stack(want, 1)
    got = model.decoder(3, max(LENGTHS) + 8).generate(ids, LENGTHS, max_new_tokens=8)
    assert torch.equal(got, want)

    eos = int(want[1, 2])  # sequence 1 ends at its third token at the latest
    got = model.decoder(3, max(LENGTHS) + 8).generate(ids, LENGTHS, max_new_tokens=8, eos_token_id=eos)
    for b in range(3):
        end = next((i for i in range(8) if want[b, i] == eos), None)
        if end is None:
            assert torch.equal(got[b], want[b])
        else:
            assert torch.equal(got[b, :end + 1], want[b, :end + 1]) and (got[b, end + 1:] == -1).all()
    everywhere = model.decoder(3, max(LENGTHS) + 8).generate(ids[:1].expand(3, -1), [LENGTHS[0]] * 3,
                                                             max_new_tokens=8, eos_token_id=int(want[0, 0]))
    assert (everywhere[:, 0] == want[0, 0]).all() and (everywhere[:, 1:] == -1).all()  # one token, then stop

    draws = []
    for _ in range(2):
        generator = torch.Generator(device=device).manual_seed(7)
        draws.append(model.decoder(3, max(LENGTHS) + 8).generate(ids, LENGTHS, max_new_tokens=8, temperature=1.0,
                                                                 generator=generator))
    assert torch.equal(draws[0], draws[1])
    assert ((draws[0] >= 0) & (draws[0] < model.config.vocab_size)).all()
    with pytest.raises(ValueError, match=r"\[lcattn\] generate: max_new_tokens must be >= 1"):
        model.decoder(3, 64).generate(ids, LENGTHS, max_new_tokens=0)
