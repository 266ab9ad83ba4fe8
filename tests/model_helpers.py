"""The tiny model, the logit comparisons and the published checkpoint's form, shared by the model tests."""
import json
import os

import torch

from lcattn.modules import DeepseekV4Config, DeepseekV4ForCausalLM


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
    """Share of tokens where a picks b's top logit, or a logit of b within twice the typical difference
    (median over tokens of the largest) of it: a near-tie that rounding alone may flip. One token far
    off does not widen its own margin."""
    a, b = a.float().flatten(0, -2), b.float().flatten(0, -2)
    slack = 2 * (a - b).abs().amax(-1).median()
    picked = b.gather(-1, a.argmax(-1, keepdim=True))
    return (picked >= b.amax(-1, keepdim=True) - slack).float().mean().item()


# The published checkpoint's form (lcattn/modules/checkpoint.py reads it), written from a state dict in
# transformers' names: DeepSeek's tensor names, e4m3 linear weights with UE8M0 scales per 128 x 128
# block, e2m1 routed experts with UE8M0 scales per 32 inputs. The names below restate the renames the
# other way round; test_checkpoint.py checks them against transformers' own loading.
DEEPSEEK_PREFIXES = (
    ("self_attn.compressor.indexer.scorer.weights_proj.", "attn.indexer.weights_proj."),
    ("self_attn.compressor.indexer.q_b_proj.", "attn.indexer.wq_b."),
    ("self_attn.compressor.indexer.", "attn.indexer.compressor."),
    ("self_attn.", "attn."),
    ("mlp.shared_experts.gate_proj.", "ffn.shared_experts.w1."),
    ("mlp.shared_experts.up_proj.", "ffn.shared_experts.w3."),
    ("mlp.shared_experts.down_proj.", "ffn.shared_experts.w2."),
    ("mlp.gate.e_score_correction_bias", "ffn.gate.bias"),
    ("mlp.", "ffn."),
    ("input_layernorm.", "attn_norm."), ("post_attention_layernorm.", "ffn_norm."),
    ("attn_hc.", "hc_attn_"), ("ffn_hc.", "hc_ffn_"),
)
DEEPSEEK_LEAVES = {"sinks": "attn_sink", "q_a_proj": "wq_a", "q_a_norm": "q_norm", "q_b_proj": "wq_b",
                   "kv_proj": "wkv", "kv_norm": "norm", "o_a_proj": "wo_a", "o_b_proj": "wo_b",
                   "position_bias": "ape", "gate_proj": "wgate"}
DEEPSEEK_TOP = {"model.embed_tokens.weight": "embed.weight", "lm_head.weight": "head.weight",
                "model.norm.weight": "norm.weight", "model.hc_head.hc_fn": "hc_head_fn",
                "model.hc_head.hc_base": "hc_head_base", "model.hc_head.hc_scale": "hc_head_scale"}
# Stored in bf16 without scales in the published model (transformers' deepseek_v4 lists them).
UNQUANTIZED = ("embed_tokens", "lm_head", "compressor.kv_proj", "compressor.gate_proj", "indexer.kv_proj",
               "indexer.gate_proj", "weights_proj")
FP4_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def deepseek_name(name):
    if name in DEEPSEEK_TOP:
        return DEEPSEEK_TOP[name]
    _, _, layer, rest = name.split(".", 3)
    for new, old in DEEPSEEK_PREFIXES:
        if rest.startswith(new):
            head, rest = old, rest[len(new):]
            break
    else:
        head = ""
    tail = ".".join(DEEPSEEK_LEAVES.get(s, s) for s in rest.split(".")) if rest else ""
    return f"layers.{layer}.{head}{tail}"


def power_of_two_scales(amax, top):
    """UE8M0 scales: the least power of two s with amax / s <= top."""
    return torch.exp2(torch.ceil(torch.log2(amax.float().clamp(min=2.0**-100) / top)))


def quantize_e4m3_blocks(w, block=128):
    rows, cols = w.shape
    br, bc = -(-rows // block), -(-cols // block)
    padded = torch.zeros(br * block, bc * block)
    padded[:rows, :cols] = w.float()
    blocks = padded.view(br, block, bc, block)
    scales = power_of_two_scales(blocks.abs().amax(dim=(1, 3)), 448.0)
    q = (blocks / scales[:, None, :, None]).view(br * block, bc * block)[:rows, :cols]
    return q.to(torch.float8_e4m3fn), scales.to(torch.float8_e8m0fnu)


def quantize_e2m1_rows(w, group=32):
    rows, cols = w.shape
    groups = w.float().view(rows, cols // group, group)
    scales = power_of_two_scales(groups.abs().amax(-1), 6.0)
    x = (groups / scales[..., None]).view(rows, cols)
    codes = (x.abs()[..., None] - torch.tensor(FP4_GRID)).abs().argmin(-1) + 8 * (x < 0)
    codes = codes.to(torch.uint8)
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).view(torch.int8), scales.to(torch.float8_e8m0fnu)


def write_published_checkpoint(state_dict, folder, quantize=True, files=2, config=None):
    """state_dict in transformers' names (the experts' gate rows before their up rows, as hf_state_dict
    gives them) -> folder/model-*.safetensors and their index (quantize=False: every tensor as given),
    the tensors spread over `files` files in name order (so a layer's experts and a weight's scale can
    land in different files); with config (a dict), folder/config.json with the published
    quantization_config."""
    from safetensors.torch import save_file
    out = {}
    for name, t in state_dict.items():
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            prefix = deepseek_name(name.rsplit(".", 1)[0] + ".x")[:-2]
            inner = t.shape[1] // 2
            for e in range(t.shape[0]):
                gate_up = name.endswith("gate_up_proj")
                parts = [("w1", t[e, :inner]), ("w3", t[e, inner:])] if gate_up else [("w2", t[e])]
                for part, w in parts:
                    key = f"{prefix}.{e}.{part}"
                    if quantize:
                        out[key + ".weight"], out[key + ".scale"] = quantize_e2m1_rows(w)
                    else:
                        out[key + ".weight"] = w.to(torch.bfloat16)
            continue
        key = deepseek_name(name)
        if quantize and name.endswith(".weight") and t.dim() == 2 and not any(u in name for u in UNQUANTIZED):
            out[key], out[key[:-len("weight")] + "scale"] = quantize_e4m3_blocks(t)
        else:
            matrix = t.dtype == torch.float32 and t.dim() == 2 and "hc" not in key and not key.endswith("ape")
            out[key] = t.to(torch.bfloat16) if quantize and matrix else t  # the other matrices in bf16, as published
    os.makedirs(folder, exist_ok=True)
    names = sorted(out)
    weight_map = {}
    for i in range(files):
        file = f"model-{i + 1:05d}-of-{files:05d}.safetensors"
        part = names[i * len(names) // files:(i + 1) * len(names) // files]
        save_file({k: out[k].contiguous() for k in part}, os.path.join(folder, file))
        weight_map.update(dict.fromkeys(part, file))
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    if config is not None:
        config = dict(config, quantization_config={
            "quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3", "scale_fmt": "ue8m0",
            "weight_block_size": [128, 128], "expert_dtype": "fp4"})
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(config, f)
    return out
