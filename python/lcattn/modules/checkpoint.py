"""DeepSeek-V4's published checkpoint, read into the model: a folder of safetensors files with DeepSeek's
own tensor names (`layers.3.attn.wq_a.weight`, `layers.3.ffn.experts.17.w1.weight`, ...), linear
weights in e4m3 with one scale per 128 x 128 block (`...wq_a.scale`), routed experts in e2m1 (FP4, two
values a byte, the low nibble first) with one scale per 32 inputs of a row, scales as UE8M0 powers of
two, raw exponent bytes or fp32; a weight without a scale is stored as it is (bf16, fp32). These are
the names and forms that transformers' deepseek_v4 loading reads. Each tensor is read, dequantized in
fp32 on the CPU and copied into its parameter (on the model's device) on its own, so memory holds one
tensor beside the model, and an expert-parallel model reads only its own experts."""
import functools
import json
import os
import re
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from lcattn import ops

# e2m1 codes 0-15: sign bit 3, then 2 exponent bits and 1 mantissa bit; a byte holds two, the low
# nibble first: byte b -> (E2M1[b & 15], E2M1[b >> 4]).
E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
E2M1_PAIRS = torch.tensor([[E2M1[b & 15], E2M1[b >> 4]] for b in range(256)])

# DeepSeek's names -> the model's (transformers' deepseek_v4 names). TOP: whole names outside the
# layers; LAYER_PREFIXES: the first matching prefix of a layer's tensor; SEGMENTS: every later segment.
TOP = {"embed.weight": "model.embed_tokens.weight", "head.weight": "lm_head.weight", "norm.weight": "model.norm.weight",
       "hc_head_fn": "model.hc_head.hc_fn", "hc_head_base": "model.hc_head.hc_base",
       "hc_head_scale": "model.hc_head.hc_scale"}
LAYER_PREFIXES = (
    ("attn.indexer.compressor.", "self_attn.compressor.indexer."),
    ("attn.indexer.weights_proj.", "self_attn.compressor.indexer.scorer.weights_proj."),
    ("attn.indexer.wq_b.", "self_attn.compressor.indexer.q_b_proj."),
    ("attn.", "self_attn."),
    ("ffn.shared_experts.w1.", "mlp.shared_experts.gate_proj."),
    ("ffn.shared_experts.w2.", "mlp.shared_experts.down_proj."),
    ("ffn.shared_experts.w3.", "mlp.shared_experts.up_proj."),
    ("ffn.gate.bias", "mlp.gate.e_score_correction_bias"),
    ("ffn.", "mlp."),
    ("attn_norm.", "input_layernorm."),
    ("ffn_norm.", "post_attention_layernorm."),
    ("hc_attn_fn", "attn_hc.fn"), ("hc_attn_base", "attn_hc.base"), ("hc_attn_scale", "attn_hc.scale"),
    ("hc_ffn_fn", "ffn_hc.fn"), ("hc_ffn_base", "ffn_hc.base"), ("hc_ffn_scale", "ffn_hc.scale"),
)
SEGMENTS = {"attn_sink": "sinks", "wq_a": "q_a_proj", "q_norm": "q_a_norm", "wq_b": "q_b_proj", "wkv": "kv_proj",
            "norm": "kv_norm", "wo_a": "o_a_proj", "wo_b": "o_b_proj", "ape": "position_bias", "wgate": "gate_proj"}
EXPERT = re.compile(r"layers\.(\d+)\.ffn\.experts\.(\d+)\.(w[123])\.weight")


def model_name(name: str) -> Optional[Tuple[str, Optional[int], Optional[str]]]:
    """A checkpoint tensor's place in the model: (parameter name, expert, part), expert and part (w1 gate,
    w3 up, w2 down) only for a routed expert's weight; None for the multi-token-prediction weights."""
    if name.startswith("mtp.") or ".mtp." in name:
        return None
    expert = EXPERT.fullmatch(name)
    if expert:
        layer, index, part = expert.groups()
        proj = "down_proj" if part == "w2" else "gate_up_proj"
        return f"model.layers.{layer}.mlp.experts.{proj}", int(index), part
    if name in TOP:
        return TOP[name], None, None
    layer = re.fullmatch(r"layers\.(\d+)\.(.+)", name)
    if not layer:
        return name, None, None  # reported as unexpected
    index, rest = layer.groups()
    head = ""
    for old, new in LAYER_PREFIXES:
        if rest.startswith(old):
            head, rest = new, rest[len(old):]
            break
    tail = ".".join(SEGMENTS.get(s, s) for s in rest.split(".")) if rest else ""
    return f"model.layers.{index}.{head}{tail}", None, None


def dequantize(weight: Tensor, scale: Tensor, block: Tuple[int, int], name: str = "weight") -> Tensor:
    """weight [rows, cols] in e4m3 (or [rows, cols / 2] bytes of e2m1 pairs) times its scales: fp8 in
    blocks of `block` (ceil-sized grid), e2m1 in groups of cols / scale columns along a row. fp32."""
    if weight.dim() != 2 or scale.dim() != 2:
        raise ValueError(f"[lcattn] checkpoint {name}: a quantized weight and its scale must be 2-D, got "
                         f"{tuple(weight.shape)} and {tuple(scale.shape)}")
    if weight.dtype in (torch.int8, torch.uint8):
        codes = weight.contiguous().view(torch.uint8).flatten().int()
        values = E2M1_PAIRS.index_select(0, codes).view(weight.shape[0], -1)  # 2x faster than [codes]
        if values.shape[1] % scale.shape[1]:
            raise ValueError(f"[lcattn] checkpoint {name}: {values.shape[1]} e2m1 columns do not split into "
                             f"{scale.shape[1]} scale groups")
        block = (1, values.shape[1] // scale.shape[1])
    else:
        values = weight.float()
    rows, cols = values.shape
    if tuple(scale.shape) != (-(-rows // block[0]), -(-cols // block[1])):
        raise ValueError(f"[lcattn] checkpoint {name}: scale {tuple(scale.shape)} does not fit a weight of "
                         f"{rows} x {cols} in blocks of {block[0]} x {block[1]}")
    factors = (scale.float() - 127).exp2() if scale.dtype == torch.uint8 else scale.float()
    if rows % block[0] == 0 and cols % block[1] == 0:  # whole blocks: the scales broadcast
        grid = (scale.shape[0], block[0], scale.shape[1], block[1])
        return (values.view(grid) * factors[:, None, :, None]).view(rows, cols)
    factors = factors.repeat_interleave(block[0], 0)[:rows].repeat_interleave(block[1], 1)[:, :cols]
    return values * factors


def checkpoint_files(folder: str) -> Dict[str, str]:
    """Tensor name -> its safetensors file: the index's weight map, else every *.safetensors file read."""
    from safetensors import safe_open
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            return {k: os.path.join(folder, v) for k, v in json.load(f)["weight_map"].items()}
    files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors")) if os.path.isdir(folder) else []
    if not files:
        raise ValueError(f"[lcattn] checkpoint: no safetensors files in {folder}")
    where = {}
    for file in files:
        with safe_open(os.path.join(folder, file), framework="pt") as f:
            where.update(dict.fromkeys(f.keys(), os.path.join(folder, file)))
    return where


def weight_block(folder: str) -> Tuple[int, int]:
    """The fp8 weights' scale block from config.json's quantization_config (128 x 128 if unnamed)."""
    path, config = os.path.join(folder, "config.json"), {}
    if os.path.exists(path):
        with open(path) as f:
            config = json.load(f)
    block = (config.get("quantization_config") or {}).get("weight_block_size") or (128, 128)
    return int(block[0]), int(block[1])


@torch.no_grad()
def load_checkpoint(model, folder: str, log: Optional[Callable[[str], None]] = print) -> None:
    """Reads the checkpoint in `folder` into `model` (a DeepseekV4ForCausalLM with memory; an
    expert-parallel one keeps its own experts), one file at a time, logging each file. Every tensor of
    the model must come from the checkpoint and every tensor of the checkpoint (but the
    multi-token-prediction ones) must have its place in the model: a missing, unexpected or misshapen
    tensor, or an e4m3 or e2m1 weight without its scale, is an [lcattn] error."""
    from safetensors import safe_open
    own = model.state_dict()
    if any(t.is_meta for t in own.values()):
        raise ValueError("[lcattn] load_checkpoint: the model is on the meta device; give it memory first "
                         "(model.to_empty(device=...))")
    where, block = checkpoint_files(folder), weight_block(folder)
    by_file = {}
    for name, file in where.items():
        by_file.setdefault(file, []).append(name)
    modules = dict(model.named_modules())
    written, unexpected = set(), []
    experts = {}  # parameter -> [local experts, 3] flags of the gate, up and down weights written
    opened = {}  # file -> its safe_open handle (a scale may sit in another file than its weight)

    def read(name: str) -> Tensor:
        if where[name] not in opened:
            opened[where[name]] = safe_open(where[name], framework="pt")
        return opened[where[name]].get_tensor(name)

    for number, (file, names) in enumerate(sorted(by_file.items()), 1):
        for name in names:
            if name.endswith(".scale") and name[:-len("scale")] + "weight" in where:
                continue  # read with its weight
            place = model_name(name)
            if place is None:
                continue
            target, expert, part = place
            if target not in own:
                unexpected.append(name)
                continue
            tensor = read(name)
            scale_name = name[:-len("weight")] + "scale" if name.endswith(".weight") else None
            if scale_name in where:
                tensor = dequantize(tensor, read(scale_name), block, name)
            elif tensor.dtype in (torch.float8_e4m3fn, torch.int8, torch.uint8):
                raise ValueError(f"[lcattn] checkpoint {name}: a quantized weight ({tensor.dtype}) without "
                                 f"its scale {scale_name}")
            dest = own[target]
            if expert is None:
                if tuple(tensor.shape) != tuple(dest.shape):
                    raise ValueError(f"[lcattn] checkpoint {name}: shape {tuple(tensor.shape)}, the model's "
                                     f"{target} is {tuple(dest.shape)}")
                dest.copy_(tensor)
                written.add(target)
                continue
            local = expert - getattr(modules[target.rsplit(".", 2)[0]], "first", 0)  # the layer's first expert
            if not 0 <= local < dest.shape[0]:
                continue  # another rank's expert
            rows = expert_rows(dest.shape[1], part).to(dest.device) if part != "w2" else slice(None)
            want = (dest.shape[1] // 2 if part != "w2" else dest.shape[1], dest.shape[2])
            if tuple(tensor.shape) != want:
                raise ValueError(f"[lcattn] checkpoint {name}: shape {tuple(tensor.shape)}, expected {want}")
            dest[local, rows] = tensor.to(device=dest.device, dtype=dest.dtype)
            flags = experts.setdefault(target, torch.zeros(dest.shape[0], 3, dtype=torch.bool))
            flags[local, "w1 w3 w2".split().index(part)] = True
        opened.clear()
        if log:
            log(f"[lcattn] checkpoint {number}/{len(by_file)}: {os.path.basename(file)}, {len(names)} tensors")
    for target, flags in experts.items():
        needed = flags[:, 2] if target.endswith("down_proj") else flags[:, :2].all(dim=1)
        if needed.all():
            written.add(target)
    missing = sorted(set(own) - written)
    if missing or unexpected:
        raise ValueError(f"[lcattn] checkpoint {folder}: missing {missing[:5]} ({len(missing)}), unexpected "
                         f"{unexpected[:5]} ({len(unexpected)})")
    model.rebuild_rope_tables()


@functools.lru_cache(maxsize=None)
def expert_rows(rows: int, part: str) -> Tensor:
    """The rows of an expert's interleaved gate_up_proj [rows = 2I, D] (ops.interleave_gate_up) that hold
    its gate (w1) or up (w3) weight rows, in their order (computed once per size)."""
    at = ops.interleave_gate_up(torch.arange(rows)[:, None])[:, 0].argsort()  # checkpoint row -> model row
    return at[:rows // 2] if part == "w1" else at[rows // 2:]
