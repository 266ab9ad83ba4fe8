"""DeepSeek-V4 model blocks against the transformers deepseek_v4 model: logits, config, RoPE, state dict."""
import pytest
import torch
from model_helpers import rel, same_argmax, write_published_checkpoint

from lcattn.modules import CSA, HCA, SLIDING, DeepseekV4Config, DeepseekV4ForCausalLM
from lcattn.modules.rope import layer_inv_freq

transformers = pytest.importorskip("transformers", minversion="5.17")


def hf_tiny(layer_types, compress_rates, window=8):
    from transformers import DeepseekV4Config as HFConfig
    from transformers import DeepseekV4ForCausalLM as HFModel
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
# lcattn runs attention and experts on bf16 inputs; transformers runs fp32 throughout. Over 270 draws
# of the tiny model the median token's relative error was 0.0056 and its largest 0.0375 (2 draws over
# 0.03: a routing or indexer pick that bf16 rounding flips early changes every later token).
HF_TOL = 6e-2


def test_hf_prefill_and_decode_logits_match():
    from transformers import DynamicCache
    hf = hf_tiny(HF_LAYERS, HF_RATES)
    model = DeepseekV4ForCausalLM.from_hf(hf)
    ids = torch.randint(0, 128, (2, 43))  # not a multiple of the ratios; past several windows of 8
    with torch.no_grad():
        ref = hf(ids).logits
        past = DynamicCache(config=hf.config)
        steps = [ids[:, :30]] + [ids[:, t:t + 1] for t in range(30, 43)]
        ref_decode = torch.cat([hf(part, past_key_values=past, use_cache=True).logits for part in steps], 1)
    ours = model(ids)
    assert rel(ours, ref) < HF_TOL and same_argmax(ours, ref) > 0.8
    cache = model.new_cache(2)
    ours_decode = torch.cat([model(ids[:, :30], cache)] + [model(ids[:, t:t + 1], cache) for t in range(30, 43)], 1)
    assert rel(ours_decode, ref_decode) < HF_TOL and same_argmax(ours_decode, ref_decode) > 0.8


def test_hf_config_rope_and_state_dict():
    hf = hf_tiny(HF_LAYERS, HF_RATES)
    config = DeepseekV4Config.from_hf(hf.config)
    assert config.layer_types == [SLIDING, CSA, HCA, CSA] and config.hca_ratio == 8 and config.num_hash_layers == 1
    assert torch.equal(layer_inv_freq(config, CSA), hf.model.rotary_emb.compress_inv_freq)
    assert torch.equal(layer_inv_freq(config, SLIDING), hf.model.rotary_emb.main_inv_freq)
    model = DeepseekV4ForCausalLM(config)
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    state["mtp.0.weight"] = torch.zeros(1)  # multi-token-prediction weights are skipped
    model.load_hf_state_dict(state)
    assert torch.equal(model.model.layers[1].self_attn.compressor.indexer.q_b_proj.weight,
                       hf.model.layers[1].self_attn.compressor.indexer.q_b_proj.weight)
    del state["lm_head.weight"]
    with pytest.raises(ValueError, match=r"\[lcattn\] state dict mismatch: missing \['lm_head.weight'\]"):
        model.load_hf_state_dict(state)


def test_published_checkpoint_loads_as_transformers_loads_it(tmp_path):
    """The published form (DeepSeek's names, e4m3 weights with UE8M0 block scales, e2m1 experts, spread
    over files) read by DeepseekV4ForCausalLM.from_pretrained and by transformers (its FP8 loading with
    dequantize=True, bf16): every tensor the same, bit for bit. transformers also checks the names
    the test writes: it loads them with no key missing or left over."""
    pytest.importorskip("accelerate")  # transformers' FP8 loading needs it
    from transformers import AutoModelForCausalLM, FineGrainedFP8Config
    hf = hf_tiny(HF_LAYERS, HF_RATES)
    write_published_checkpoint(hf.state_dict(), tmp_path, files=3, config=hf.config.to_dict())
    theirs, info = AutoModelForCausalLM.from_pretrained(
        tmp_path, dtype=torch.bfloat16, output_loading_info=True,
        quantization_config=FineGrainedFP8Config(dequantize=True, scale_fmt="ue8m0", expert_dtype="fp4"))
    assert not any(info.values()), info
    ours = DeepseekV4ForCausalLM.from_pretrained(str(tmp_path), log=None).hf_state_dict()
    theirs = theirs.state_dict()
    assert set(ours) == set(theirs)
    for name, tensor in theirs.items():
        assert torch.equal(ours[name], tensor.to(ours[name].dtype)), name
        assert ours[name].dtype == tensor.dtype or name.endswith("tid2eid"), name  # int32 hash table
