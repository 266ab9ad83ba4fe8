"""Model configuration: V4-Flash and V4-Pro presets (SPEC 1) and construction from transformers."""
from dataclasses import dataclass, field, replace
from typing import List

SLIDING, CSA, HCA = "sliding", "csa", "hca"
_HF_LAYER_TYPES = {"sliding_attention": SLIDING, "compressed_sparse_attention": CSA,
                   "heavily_compressed_attention": HCA}


@dataclass
class DeepseekV4Config:
    vocab_size: int = 129280
    hidden_size: int = 4096
    num_heads: int = 64
    head_dim: int = 512
    rope_dim: int = 64
    q_lora_rank: int = 1024
    o_groups: int = 8
    o_lora_rank: int = 1024
    window: int = 128
    layer_types: List[str] = field(default_factory=list)  # per layer: sliding, csa or hca
    csa_ratio: int = 4
    hca_ratio: int = 128
    index_heads: int = 64
    index_dim: int = 128
    index_topk: int = 512
    # The indexer in DeepSeek's fp8 form: keys cached as e4m3 with a scale per entry (half the
    # bytes), queries quantized per token and head (ops.quantize_e4m3) and scored in e4m3.
    index_fp8: bool = False
    # The compressed attention entries cached in the kv_fp8 form (ops.quantize_kv_fp8, FlashMLA's
    # layout): 584 bytes an entry at V4's head dim instead of 1024 in bf16.
    kv_fp8: bool = False
    num_experts: int = 256
    experts_per_token: int = 6
    expert_dim: int = 2048
    route_scale: float = 1.5
    num_hash_layers: int = 3  # the first layers route by token id
    swiglu_limit: float = 10.0
    hc_mult: int = 4
    hc_sinkhorn_iters: int = 20
    hc_eps: float = 1e-6
    rms_eps: float = 1e-6
    rope_theta: float = 10000.0
    compress_rope_theta: float = 160000.0
    yarn_factor: float = 16.0  # 0: no YaRN on the compressed layers
    yarn_original_positions: int = 65536
    yarn_beta_fast: float = 32.0
    yarn_beta_slow: float = 1.0
    max_positions: int = 1048576

    def __post_init__(self):
        """An [lcattn] error for a configuration no model can be built from."""
        def need(ok: bool, what: str, value) -> None:
            if not ok:
                raise ValueError(f"[lcattn] config: {what}, got {value}")
        for name in ("vocab_size", "hidden_size", "num_heads", "head_dim", "q_lora_rank", "o_groups", "o_lora_rank",
                     "window", "csa_ratio", "hca_ratio", "index_heads", "index_dim", "index_topk", "num_experts",
                     "experts_per_token", "expert_dim", "hc_sinkhorn_iters", "max_positions"):
            need(getattr(self, name) >= 1, f"{name} must be at least 1", getattr(self, name))
        unknown = [t for t in self.layer_types if t not in (SLIDING, CSA, HCA)]
        need(not unknown, f"layer_types must be '{SLIDING}', '{CSA}' or '{HCA}'", unknown)
        need(0 <= self.rope_dim <= self.head_dim and self.rope_dim % 2 == 0,
             f"rope_dim must be even and in [0, head_dim = {self.head_dim}]", self.rope_dim)
        need(self.num_heads % self.o_groups == 0, f"o_groups must divide num_heads = {self.num_heads}", self.o_groups)
        need(self.experts_per_token <= self.num_experts, f"experts_per_token must be at most num_experts = "
             f"{self.num_experts}", self.experts_per_token)
        need(0 <= self.num_hash_layers, "num_hash_layers must be at least 0", self.num_hash_layers)
        need(1 <= self.hc_mult <= 8, "hc_mult (mHC streams) must be in [1, 8]", self.hc_mult)
        need(self.yarn_factor == 0 or self.yarn_original_positions >= 1,
             "yarn_original_positions must be at least 1 with YaRN (yarn_factor > 0)", self.yarn_original_positions)

    @property
    def num_layers(self) -> int:
        return len(self.layer_types)

    def ratio(self, layer: int) -> int:
        """Compression ratio of a layer: 0 for window-only layers."""
        return {SLIDING: 0, CSA: self.csa_ratio, HCA: self.hca_ratio}[self.layer_types[layer]]

    def with_layers(self, layer_types: List[str]) -> "DeepseekV4Config":
        return replace(self, layer_types=list(layer_types))

    @staticmethod
    def flash(num_layers: int = 43) -> "DeepseekV4Config":
        """V4-Flash: window-only layers 0 and 1, then CSA on even and HCA on odd layers."""
        types = [SLIDING, SLIDING] + [CSA if i % 2 == 0 else HCA for i in range(2, num_layers)]
        return DeepseekV4Config(layer_types=types[:num_layers])

    @staticmethod
    def pro(num_layers: int = 61) -> "DeepseekV4Config":
        """V4-Pro: HCA layers 0 and 1, then CSA and HCA alternating."""
        types = [HCA, HCA] + [CSA if i % 2 == 0 else HCA for i in range(2, num_layers)]
        return DeepseekV4Config(vocab_size=129280, hidden_size=7168, num_heads=128, q_lora_rank=1536, o_groups=16,
                                index_topk=1024, num_experts=384, expert_dim=3072, route_scale=2.5,
                                layer_types=types[:num_layers])

    @staticmethod
    def tiny() -> "DeepseekV4Config":
        """A small model of every layer kind for CPU runs and tests."""
        return DeepseekV4Config(vocab_size=512, hidden_size=128, num_heads=4, head_dim=64, rope_dim=16, q_lora_rank=64,
                                o_groups=2, o_lora_rank=32, window=16, layer_types=[SLIDING, CSA, HCA, CSA],
                                hca_ratio=16, index_heads=4, index_dim=32, index_topk=8, num_experts=8,
                                experts_per_token=2, expert_dim=64, num_hash_layers=1, hc_sinkhorn_iters=20)

    @staticmethod
    def from_hf(hf) -> "DeepseekV4Config":
        """From a transformers DeepseekV4Config."""
        mlp_types = list(hf.mlp_layer_types)
        num_hash = mlp_types.count("hash_moe")
        if mlp_types[:num_hash] != ["hash_moe"] * num_hash:
            raise ValueError(f"[lcattn] hash-routed MoE layers must come first, got {mlp_types}")
        if hf.n_shared_experts != 1 or hf.num_key_value_heads != 1 or hf.scoring_func != "sqrtsoftplus":
            raise ValueError("[lcattn] expects one shared expert, one KV head and sqrtsoftplus routing")
        compress = hf.rope_parameters["compress"]
        yarn = compress.get("rope_type") == "yarn"
        return DeepseekV4Config(
            vocab_size=hf.vocab_size, hidden_size=hf.hidden_size, num_heads=hf.num_attention_heads,
            head_dim=hf.head_dim, rope_dim=hf.qk_rope_head_dim, q_lora_rank=hf.q_lora_rank, o_groups=hf.o_groups,
            o_lora_rank=hf.o_lora_rank, window=hf.sliding_window,
            layer_types=[_HF_LAYER_TYPES[t] for t in hf.layer_types],
            csa_ratio=hf.compress_rates["compressed_sparse_attention"],
            hca_ratio=hf.compress_rates["heavily_compressed_attention"], index_heads=hf.index_n_heads,
            index_dim=hf.index_head_dim, index_topk=hf.index_topk, num_experts=hf.n_routed_experts,
            experts_per_token=hf.num_experts_per_tok, expert_dim=hf.moe_intermediate_size,
            route_scale=hf.routed_scaling_factor, num_hash_layers=num_hash, swiglu_limit=hf.swiglu_limit,
            hc_mult=hf.hc_mult, hc_sinkhorn_iters=hf.hc_sinkhorn_iters, hc_eps=hf.hc_eps, rms_eps=hf.rms_norm_eps,
            rope_theta=hf.rope_parameters["main"]["rope_theta"], compress_rope_theta=compress["rope_theta"],
            yarn_factor=compress["factor"] if yarn else 0.0,
            yarn_original_positions=compress.get("original_max_position_embeddings", 0) if yarn else 0,
            yarn_beta_fast=compress.get("beta_fast") or 32.0, yarn_beta_slow=compress.get("beta_slow") or 1.0,
            max_positions=hf.max_position_embeddings)
