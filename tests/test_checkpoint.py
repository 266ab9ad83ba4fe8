"""DeepSeek-V4's published checkpoint form (DeepSeek's names, e4m3 and e2m1 weights with their scales)
read into the model: lcattn.modules.checkpoint. test_transformers_compat.py reads the same form with
transformers and compares."""
import json

import pytest
import torch
from model_helpers import FP4_GRID, quantize_e2m1_rows, quantize_e4m3_blocks, tiny_model, write_published_checkpoint

from lcattn.modules import DeepseekV4ForCausalLM
from lcattn.modules.checkpoint import dequantize, model_name


def fresh_model(config, device="cpu"):
    with torch.device("meta"):
        model = DeepseekV4ForCausalLM(config)
    return model.to_empty(device=device).to(torch.bfloat16)


@pytest.mark.parametrize("rows,cols", [(256, 384), (200, 300), (64, 40)])
def test_dequantize_e4m3_blocks(rows, cols):
    """Each 128 x 128 block (the last ones cut short) times its scale, whether the scales come as UE8M0,
    fp32 or raw exponent bytes; within e4m3's rounding of the weight it quantizes."""
    w = torch.randn(rows, cols) * torch.rand(rows, 1) * 10
    q, scales = quantize_e4m3_blocks(w)
    want = q.float()
    for i in range(scales.shape[0]):
        for j in range(scales.shape[1]):
            want[128 * i:128 * (i + 1), 128 * j:128 * (j + 1)] *= scales[i, j].float()
    exponents = (scales.float().log2() + 127).to(torch.uint8)
    for form in (scales, scales.float(), exponents):
        assert torch.equal(dequantize(q, form, (128, 128)), want)
    assert ((want - w).norm() / w.norm()).item() < 0.05


def test_dequantize_e2m1_pairs():
    """Two e2m1 codes a byte, the low nibble first (sign bit 3), each group of 32 along a row times its
    scale."""
    rows, cols = 3, 64
    codes = torch.randint(0, 16, (rows, cols), dtype=torch.uint8)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).view(torch.int8)
    scales = torch.exp2(torch.randint(-4, 5, (rows, cols // 32)).float())
    want = torch.empty(rows, cols)
    for r in range(rows):
        for c in range(cols):
            code = int(codes[r, c])
            want[r, c] = (-1 if code & 8 else 1) * FP4_GRID[code & 7] * scales[r, c // 32]
    assert torch.equal(dequantize(packed, scales.to(torch.float8_e8m0fnu), (128, 128)), want)
    w = torch.randn(8, 128)
    q, s = quantize_e2m1_rows(w)
    assert ((dequantize(q, s, (128, 128)) - w).norm() / w.norm()).item() < 0.15  # e2m1: 1 mantissa bit


def test_dequantize_checks_the_scale_grid():
    q, scales = quantize_e4m3_blocks(torch.randn(200, 300))
    with pytest.raises(ValueError, match=r"\[lcattn\] checkpoint w: scale \(2, 3\) does not fit"):
        dequantize(q, scales, (64, 128), "w")
    with pytest.raises(ValueError, match=r"\[lcattn\] checkpoint w: .* must be 2-D"):
        dequantize(q[0], scales, (128, 128), "w")


def test_model_names():
    assert model_name("layers.2.attn.indexer.compressor.norm.weight") == (
        "model.layers.2.self_attn.compressor.indexer.kv_norm.weight", None, None)
    assert model_name("layers.0.attn.norm.weight") == ("model.layers.0.self_attn.kv_norm.weight", None, None)
    assert model_name("layers.5.ffn.experts.17.w3.weight") == ("model.layers.5.mlp.experts.gate_up_proj", 17, "w3")
    assert model_name("layers.5.ffn.shared_experts.w2.weight") == (
        "model.layers.5.mlp.shared_experts.down_proj.weight", None, None)
    assert model_name("layers.1.hc_ffn_scale") == ("model.layers.1.ffn_hc.scale", None, None)
    assert model_name("head.weight") == ("lm_head.weight", None, None)
    assert model_name("mtp.0.embed.weight") is None


def test_checkpoint_loads_the_model_it_was_written_from(device, tmp_path):
    """Unquantized, the published form gives back every tensor bit for bit (so the same logits), one
    logged line a file; quantized, each weight is its dequantized value."""
    model = tiny_model(device).to(torch.bfloat16)
    state = {k: v.cpu() for k, v in model.hf_state_dict().items()}
    write_published_checkpoint(state, tmp_path / "plain", quantize=False, files=3)
    lines = []
    loaded = fresh_model(model.config, device)
    loaded.load_checkpoint(str(tmp_path / "plain"), log=lines.append)
    assert [line.split(":")[0] for line in lines] == [f"[lcattn] checkpoint {i}/3" for i in (1, 2, 3)]
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    ids = torch.randint(0, model.config.vocab_size, (2, 9), device=device)
    assert torch.equal(loaded(ids), model(ids))

    written = write_published_checkpoint(state, tmp_path / "fp8", files=2)
    loaded.load_checkpoint(str(tmp_path / "fp8"), log=None)
    q, s = written["layers.1.attn.wq_a.weight"], written["layers.1.attn.wq_a.scale"]
    want = (q.float() * s.float()).bfloat16().to(device)
    assert torch.equal(loaded.model.layers[1].self_attn.q_a_proj.weight, want)
    q, s = written["layers.1.ffn.experts.3.w2.weight"], written["layers.1.ffn.experts.3.w2.scale"]
    want = dequantize(q, s, (128, 128)).bfloat16().to(device)
    assert torch.equal(loaded.model.layers[1].mlp.experts.down_proj[3], want)
    assert torch.isfinite(loaded(ids)).all()


def test_checkpoint_errors(tmp_path):
    model = tiny_model("cpu").to(torch.bfloat16)
    state = model.hf_state_dict()
    missing = {k: v for k, v in state.items() if not k.endswith("layers.1.self_attn.q_a_proj.weight")}
    write_published_checkpoint(missing, tmp_path / "missing")
    with pytest.raises(ValueError, match=r"\[lcattn\] checkpoint .*missing \['model.layers.1.self_attn.q_a_proj"):
        fresh_model(model.config).load_checkpoint(str(tmp_path / "missing"), log=None)
    write_published_checkpoint(dict(state, **{"model.layers.1.self_attn.extra.weight": torch.zeros(2, 2)}),
                               tmp_path / "extra", quantize=False)
    with pytest.raises(ValueError, match=r"unexpected \['layers.1.attn.extra.weight'\]"):
        fresh_model(model.config).load_checkpoint(str(tmp_path / "extra"), log=None)
    shape = dict(state, **{"model.norm.weight": state["model.norm.weight"][:-1]})
    write_published_checkpoint(shape, tmp_path / "shape", quantize=False)
    with pytest.raises(ValueError, match=r"\[lcattn\] checkpoint norm.weight: shape"):
        fresh_model(model.config).load_checkpoint(str(tmp_path / "shape"), log=None)
    index = tmp_path / "missing" / "model.safetensors.index.json"
    weight_map = json.loads(index.read_text())
    del weight_map["weight_map"]["layers.2.attn.wq_a.scale"]
    index.write_text(json.dumps(weight_map))
    with pytest.raises(ValueError, match=r"checkpoint layers.2.attn.wq_a.weight: a quantized weight "
                                         r"\(torch.float8_e4m3fn\) without its scale"):
        fresh_model(model.config).load_checkpoint(str(tmp_path / "missing"), log=None)
    with torch.device("meta"):
        meta = DeepseekV4ForCausalLM(model.config)
    with pytest.raises(ValueError, match=r"\[lcattn\] load_checkpoint: the model is on the meta device"):
        meta.load_checkpoint(str(tmp_path / "shape"), log=None)
    with pytest.raises(ValueError, match=r"\[lcattn\] checkpoint: no safetensors files"):
        fresh_model(model.config).load_checkpoint(str(tmp_path / "none"), log=None)
