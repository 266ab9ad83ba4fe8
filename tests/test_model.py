"""DeepSeek-V4 model blocks: cache consistency, batching and presets."""
from dataclasses import replace

import pytest
import torch
from model_helpers import rel, same_argmax, tiny_model

from lcattn.modules import CSA, HCA, SLIDING, DeepseekV4Config, DeepseekV4ForCausalLM
from lcattn.modules.model import stream_mix

# Logits agree up to bf16 rounding of the ops' inputs; where rounding flips a discrete choice (an
# expert, an indexer pick) a token differs more, so the tests bound the median token and the argmax.
TOL = 1e-2


def test_chunked_prefill_and_decode_match_one_shot(device):
    model = tiny_model(device)
    ids = torch.randint(0, model.config.vocab_size, (2, 70), device=device)  # past several windows and blocks
    full = model(ids)
    cache = model.new_cache(2)
    parts = [model(ids[:, :5], cache), model(ids[:, 5:38], cache), model(ids[:, 38:50], cache)]
    parts += [model(ids[:, t:t + 1], cache) for t in range(50, 70)]
    chunked = torch.cat(parts, 1)
    assert rel(chunked, full) < TOL and same_argmax(chunked, full) > 0.8
    assert cache.host_lengths == [70, 70] and cache.lengths.tolist() == [70, 70]


def test_batch_of_different_lengths_matches_single_sequences(device):
    # Several decode steps, compared as one set of tokens: a single step's token can differ a lot where
    # rounding flips an indexer pick between near-tied entries (seed 1514219535: entries 2 and 3).
    model = tiny_model(device)
    lengths, steps = [53, 21], 4
    ids = torch.randint(0, model.config.vocab_size, (2, 53), device=device)
    cache = model.new_cache(2)
    batched = model(ids, cache, lengths=lengths)
    nxt = torch.randint(0, model.config.vocab_size, (2, steps), device=device)
    batched_steps = torch.cat([model(nxt[:, t:t + 1], cache) for t in range(steps)], 1)
    single_steps = []
    for b, n in enumerate(lengths):
        single_cache = model.new_cache(1)
        alone = model(ids[b:b + 1, :n], single_cache)
        assert rel(batched[b, :n], alone[0]) < TOL
        single_steps.append(torch.cat([model(nxt[b:b + 1, t:t + 1], single_cache) for t in range(steps)], 1))
    single_steps = torch.cat(single_steps)
    assert rel(batched_steps, single_steps) < TOL and same_argmax(batched_steps, single_steps) > 0.8


def test_last_logits_are_each_rows_logits_at_its_end(device):
    """last=True: the LM head on each row's last valid token alone (a row of length 0: its first)."""
    model = tiny_model(device)
    lengths = [53, 21, 0]
    ids = torch.randint(0, model.config.vocab_size, (3, 53), device=device)
    full = model(ids, model.new_cache(3), lengths=lengths)
    last = model(ids, model.new_cache(3), lengths=lengths, last=True)
    assert last.shape == (3, model.config.vocab_size)
    ends = torch.stack([full[b, max(n, 1) - 1] for b, n in enumerate(lengths)])
    assert rel(last, ends) < 1e-5
    assert rel(model(ids[:2], last=True), model(ids[:2])[:, -1]) < 1e-5


@pytest.mark.cuda
def test_stream_mix_of_bf16_streams_matches_fp32_cuda():
    """On CUDA the mHC mix of a prefill's bf16 streams is a bf16 GEMM against fn split in two bf16 parts."""
    streams = torch.randn(3, 90, 4, 4096, device="cuda").bfloat16()  # prefill-sized: 270 tokens
    fn = torch.randn(24, 4 * 4096, device="cuda") * 0.01
    x = streams.flatten(2).float()
    ref = torch.nn.functional.linear(x, fn) * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-6)
    got = stream_mix(streams, fn, 1e-6)
    assert got.dtype == torch.float32 and ((got - ref).norm(dim=-1) / ref.norm(dim=-1)).max() < 1e-5


@pytest.mark.parametrize("kinds", [[SLIDING], [CSA], [HCA]])
def test_each_layer_kind_alone(device, kinds):
    model = tiny_model(device, layer_types=kinds)
    ids = torch.randint(0, model.config.vocab_size, (1, 45), device=device)
    full = model(ids)
    cache = model.new_cache(1)
    steps = torch.cat([model(ids[:, :9], cache)] + [model(ids[:, t:t + 1], cache) for t in range(9, 45)], 1)
    assert torch.isfinite(full).all() and rel(steps, full) < TOL


def test_bad_lengths_are_rejected():
    model = tiny_model("cpu")
    with pytest.raises(ValueError, match=r"\[lcattn\] lengths must be 2 ints in \[0, 4\]"):
        model(torch.zeros(2, 4, dtype=torch.long), lengths=[5, 1])
    with pytest.raises(ValueError, match=r"\[lcattn\] lengths must be 2 ints in \[0, 4\], got \[2.7, 3\]"):
        model(torch.zeros(2, 4, dtype=torch.long), lengths=[2.7, 3], last=True)


def test_bad_ids_are_rejected_before_the_cache_changes():
    """Ids that are not int64 or int32 [B, S], none, or of another batch than the cache's: an error
    before any layer writes the cache, so the next call continues as if the bad one had not been made;
    int32 ids give int64's logits."""
    model = tiny_model("cpu")
    ids = torch.randint(0, model.config.vocab_size, (1, 30))
    cache, fresh = model.new_cache(1), model.new_cache(1)
    model(ids[:, :20], cache), model(ids[:, :20], fresh)
    for bad, match in ((ids[:, 20:].float(), r"input_ids must be int64 or int32 token ids \[B, S\], got torch.float32"),
                       (ids[0, 20:], r"input_ids must be int64 or int32 token ids \[B, S\], got torch.int64 \(10,\)"),
                       (ids[:, :0], r"input_ids must hold at least one position"),
                       (ids[:, 20:].repeat(2, 1), r"the cache holds 1 sequences, got input_ids of 2")):
        with pytest.raises(ValueError, match=r"\[lcattn\] " + match):
            model(bad, cache)
    assert cache.host_lengths == [20]
    assert torch.equal(model(ids[:, 20:].int(), cache), model(ids[:, 20:], fresh))


def test_config_is_checked():
    for change, match in (({"layer_types": ["dense"]}, r"layer_types must be 'sliding', 'csa' or 'hca', "
                                                        r"got \['dense'\]"),
                          ({"o_groups": 3}, r"o_groups must divide num_heads = 4, got 3"),
                          ({"csa_ratio": 0}, r"csa_ratio must be at least 1, got 0"),
                          ({"experts_per_token": 9}, r"experts_per_token must be at most num_experts = 8, got 9"),
                          ({"rope_dim": 3}, r"rope_dim must be even and in \[0, head_dim = 64\], got 3")):
        with pytest.raises(ValueError, match=r"\[lcattn\] config: " + match):
            replace(DeepseekV4Config.tiny(), **change)


def test_dtype_conversion_keeps_the_fixed_dtypes():
    """model.to(bfloat16) converts the matrices and keeps norms, sinks, mHC and RoPE tables in fp32 and the
    experts in bf16, as a model built in bf16 has them: the same logits."""
    model = tiny_model("cpu")
    ids = torch.randint(0, model.config.vocab_size, (1, 12))
    torch.set_default_dtype(torch.bfloat16)
    try:
        built = DeepseekV4ForCausalLM(model.config)
    finally:
        torch.set_default_dtype(torch.float32)
    built.load_hf_state_dict({k: v.to(built.state_dict()[k].dtype) for k, v in model.hf_state_dict().items()})
    converted = model.to(torch.bfloat16)
    for name, t in [*built.state_dict().items()]:
        assert converted.state_dict()[name].dtype == t.dtype, name
    assert torch.equal(converted(ids), built(ids))


def test_loading_copies_onto_the_model():
    """load_hf_state_dict copies: the loaded model and the checkpoint's tensors share no memory."""
    model = tiny_model("cpu")
    ids = torch.randint(0, model.config.vocab_size, (1, 12))
    before = model(ids)
    again = DeepseekV4ForCausalLM(model.config)
    again.load_hf_state_dict(model.hf_state_dict())
    again.init_weights(generator=torch.Generator().manual_seed(5))
    assert torch.equal(model(ids), before)
    half = {k: v.half() if v.dtype == torch.float32 else v for k, v in model.hf_state_dict().items()}
    half["model.layers.1.self_attn.compressor.kv_proj.weight"] = model.hf_state_dict()[
        "model.layers.1.self_attn.compressor.kv_proj.weight"]  # fp32, as transformers keeps some in fp16 models
    again.load_hf_state_dict(half)  # the non-fixed tensors in the checkpoint's (lm_head's) dtype
    assert again.state_dict()["model.layers.1.self_attn.compressor.kv_proj.weight"].dtype == torch.float16
    assert again.state_dict()["model.norm.weight"].dtype == torch.float32 and again(ids).dtype == torch.float16
    with torch.device("meta"):
        lazy = DeepseekV4ForCausalLM(model.config)
    with pytest.raises(ValueError, match=r"\[lcattn\] load_hf_state_dict: the model is on the meta device"):
        lazy.load_hf_state_dict(model.hf_state_dict())
    lazy.to_empty(device="cpu").load_hf_state_dict(model.hf_state_dict())  # no memory until it is needed
    assert torch.equal(lazy(ids), before)


def test_presets():
    flash, pro = DeepseekV4Config.flash(), DeepseekV4Config.pro()
    assert flash.num_layers == 43 and flash.layer_types[:4] == [SLIDING, SLIDING, CSA, HCA]
    assert pro.num_layers == 61 and pro.layer_types[:4] == [HCA, HCA, CSA, HCA] and pro.hidden_size == 7168
    assert [flash.ratio(i) for i in range(4)] == [0, 0, 4, 128]


def test_hf_state_dict_round_trip():
    """hf_state_dict gives the checkpoint's layout (gate rows first) that load_hf_state_dict takes back."""
    model = tiny_model("cpu")
    ids = torch.randint(0, model.config.vocab_size, (1, 20))
    again = DeepseekV4ForCausalLM(model.config)
    again.load_hf_state_dict(model.hf_state_dict())
    for name, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name
    assert torch.equal(again(ids), model(ids))


def test_fp8_indexer(device):
    """index_fp8: chunked prefill and decode give the one-shot logits, the logits stay near the bf16
    indexer's (same weights; fp8 rounding may move a few picks), and the indexer cache holds e4m3
    keys and a scale per entry: dim + 4 bytes against 2 dim."""
    model = tiny_model(device, layer_types=[CSA, CSA])
    ids = torch.randint(0, model.config.vocab_size, (2, 60), device=device)
    bf16 = model(ids)
    model.config.index_fp8 = True
    full = model(ids)
    cache = model.new_cache(2)
    chunked = torch.cat([model(ids[:, :21], cache)] + [model(ids[:, t:t + 1], cache) for t in range(21, 60)], 1)
    assert rel(chunked, full) < TOL and same_argmax(chunked, full) > 0.8
    assert rel(full, bf16) < 0.1, rel(full, bf16)
    keys = cache.layers[0].index_keys
    assert keys.entries.dtype == torch.float8_e4m3fn and keys.scales.shape == keys.entries.shape[:2]
    dim = model.config.index_dim
    assert keys.nbytes(10) - keys.nbytes(0) == 10 * (dim + 4)


def test_kv_fp8_cache(device):
    """kv_fp8: chunked prefill and decode give the one-shot logits, the logits stay near the bf16
    cache's (same weights; fp8 rounding of the entries), and the CSA and HCA entries are cached in
    the kv_fp8 form: 88 bytes at the tiny model's head dim 64 against 128."""
    model = tiny_model(device, layer_types=[CSA, HCA])
    ids = torch.randint(0, model.config.vocab_size, (2, 60), device=device)
    bf16 = model(ids)
    model.config.kv_fp8 = True
    full = model(ids)
    cache = model.new_cache(2)
    chunked = torch.cat([model(ids[:, :21], cache)] + [model(ids[:, t:t + 1], cache) for t in range(21, 60)], 1)
    assert rel(chunked, full) < TOL and same_argmax(chunked, full) > 0.8
    assert 0 < rel(full, bf16) < 0.1, rel(full, bf16)
    for layer in cache.layers:
        assert layer.ckv.entries.dtype == torch.uint8 and layer.ckv.entry_bytes() == 88
        assert layer.ckv.nbytes(10) - layer.ckv.nbytes(0) == 880
