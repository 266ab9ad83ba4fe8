"""DeepSeek-V4 model blocks: cache consistency, batching, and logits against transformers."""
import pytest
import torch

from lcattn.modules import CSA, HCA, SLIDING, DeepseekV4Config, DeepseekV4ForCausalLM
from lcattn.modules.rope import inv_freq

# Logits agree up to bf16 rounding of the ops' inputs; where rounding flips a discrete choice (an
# expert, an indexer pick) a token differs more, so the tests bound the median token and the argmax.
TOL = 1e-2


def tiny_model(device, **changes):
    config = DeepseekV4Config.tiny()
    for key, value in changes.items():
        setattr(config, key, value)
    return DeepseekV4ForCausalLM(config).init_weights(std=0.05).to(device)


def rel(a, b):
    """Median over tokens of ||a - b|| / ||b|| across the vocabulary."""
    a, b = a.float().flatten(0, -2), b.float().flatten(0, -2)
    return ((a - b).norm(dim=-1) / b.norm(dim=-1)).median().item()


def same_argmax(a, b):
    return (a.argmax(-1) == b.argmax(-1)).float().mean().item()


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
    model = tiny_model(device)
    lengths = [53, 21]
    ids = torch.randint(0, model.config.vocab_size, (2, 53), device=device)
    cache = model.new_cache(2)
    batched = model(ids, cache, lengths=lengths)
    nxt = torch.randint(0, model.config.vocab_size, (2, 1), device=device)
    batched_step = model(nxt, cache)
    for b, n in enumerate(lengths):
        single_cache = model.new_cache(1)
        alone = model(ids[b:b + 1, :n], single_cache)
        assert rel(batched[b, :n], alone[0]) < TOL
        assert rel(batched_step[b], model(nxt[b:b + 1], single_cache)[0]) < TOL


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
    with pytest.raises(ValueError, match=r"\[lcattn\] lengths must be 2 values in \[0, 4\]"):
        model(torch.zeros(2, 4, dtype=torch.long), lengths=[5, 1])


def test_presets():
    flash, pro = DeepseekV4Config.flash(), DeepseekV4Config.pro()
    assert flash.num_layers == 43 and flash.layer_types[:4] == [SLIDING, SLIDING, CSA, HCA]
    assert pro.num_layers == 61 and pro.layer_types[:4] == [HCA, HCA, CSA, HCA] and pro.hidden_size == 7168
    assert [flash.ratio(i) for i in range(4)] == [0, 0, 4, 128]


transformers = pytest.importorskip("transformers", minversion="5.17")


def hf_tiny(layer_types, compress_rates, window=8):
    from transformers import DeepseekV4Config as HFConfig, DeepseekV4ForCausalLM as HFModel
    config = HFConfig(
        vocab_size=128, hidden_size=64, moe_intermediate_size=32, num_hidden_layers=len(layer_types),
        num_attention_heads=4, head_dim=32, q_lora_rank=32, partial_rotary_factor=0.25, num_experts_per_tok=2,
        n_routed_experts=8, routed_scaling_factor=1.5, layer_types=layer_types, compress_rates=compress_rates,
        sliding_window=window, o_groups=2, o_lora_rank=16, index_n_heads=4, index_head_dim=16, index_topk=4,
        mlp_layer_types=["hash_moe"] + ["moe"] * (len(layer_types) - 1),
        rope_parameters={"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 4096,
                         "beta_fast": 32, "beta_slow": 1},
        max_position_embeddings=65536, attn_implementation="eager")
    model = HFModel(config).float().eval()
    with torch.no_grad():  # every weight random, including the ones transformers initialises to 0 or 1
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "layernorm.weight", "scale")):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0, 0.05)
        for name, b in model.named_buffers():
            if name.endswith("tid2eid"):
                b.copy_(torch.argsort(torch.rand(b.shape[0], 8), dim=1)[:, :2])
            elif name.endswith("e_score_correction_bias"):
                b.normal_(0, 0.01)
    return model


HF_LAYERS = ["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention",
             "compressed_sparse_attention"]
HF_RATES = {"compressed_sparse_attention": 4, "heavily_compressed_attention": 8}
HF_TOL = 3e-2  # lcattn runs attention and experts on bf16 inputs; transformers runs fp32 throughout


def test_hf_prefill_and_decode_logits_match():
    from transformers import DynamicCache
    hf = hf_tiny(HF_LAYERS, HF_RATES)
    model = DeepseekV4ForCausalLM.from_hf(hf)
    ids = torch.randint(0, 128, (2, 43))  # not a multiple of the ratios; past several windows of 8
    with torch.no_grad():
        ref = hf(ids).logits
        past = DynamicCache(config=hf.config)
        ref_decode = torch.cat([hf(ids[:, :30], past_key_values=past, use_cache=True).logits] +
                               [hf(ids[:, t:t + 1], past_key_values=past, use_cache=True).logits for t in range(30, 43)], 1)
    ours = model(ids)
    assert rel(ours, ref) < HF_TOL and same_argmax(ours, ref) > 0.8
    cache = model.new_cache(2)
    ours_decode = torch.cat([model(ids[:, :30], cache)] + [model(ids[:, t:t + 1], cache) for t in range(30, 43)], 1)
    assert rel(ours_decode, ref_decode) < HF_TOL and same_argmax(ours_decode, ref_decode) > 0.8


def test_hf_config_rope_and_state_dict():
    hf = hf_tiny(HF_LAYERS, HF_RATES)
    config = DeepseekV4Config.from_hf(hf.config)
    assert config.layer_types == [SLIDING, CSA, HCA, CSA] and config.hca_ratio == 8 and config.num_hash_layers == 1
    assert torch.equal(inv_freq(config, CSA), hf.model.rotary_emb.compress_inv_freq)
    assert torch.equal(inv_freq(config, SLIDING), hf.model.rotary_emb.main_inv_freq)
    model = DeepseekV4ForCausalLM(config)
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    state["mtp.0.weight"] = torch.zeros(1)  # multi-token-prediction weights are skipped
    model.load_hf_state_dict(state)
    assert torch.equal(model.model.layers[1].self_attn.compressor.indexer.q_b_proj.weight,
                       hf.model.layers[1].self_attn.compressor.indexer.q_b_proj.weight)
    del state["lm_head.weight"]
    with pytest.raises(ValueError, match=r"\[lcattn\] state dict mismatch: missing \['lm_head.weight'\]"):
        model.load_hf_state_dict(state)
