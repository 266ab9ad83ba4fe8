"""DeepSeek-V4 blocks on lcattn ops (SPEC 2-7). Module and parameter names follow the transformers
`deepseek_v4` model, so its state dicts load as they are."""
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lcattn import ops
from lcattn.modules.cache import DeepseekV4Cache, LayerCache, Step, check_token_ids
from lcattn.modules.config import CSA, HCA, SLIDING, DeepseekV4Config
from lcattn.modules.decoder import Decoder
from lcattn.modules.rope import apply_rope, layer_inv_freq


class RMSNorm(nn.Module):
    """w * x / sqrt(mean(x^2) + eps) in fp32; the weight stays fp32 (SPEC 2)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, dtype=torch.float32))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


def unit_rms(x: Tensor, eps: float) -> Tensor:
    """x / rms(x) over the last dim, in fp32 and rounded once (torch's fused kernel on CUDA)."""
    return F.rms_norm(x, (x.shape[-1],), eps=eps)


def mean_square(x: Tensor) -> Tensor:
    """mean(x^2) over the last dim [..., 1], summed in fp32."""
    return torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32).square() / x.shape[-1]


def linear(dim_in: int, dim_out: int) -> nn.Linear:
    return nn.Linear(dim_in, dim_out, bias=False)


class Compressor(nn.Module):
    """Block KV compressor (SPEC 3) of width `dim`; overlapping (CSA) or not (HCA)."""

    def __init__(self, config: DeepseekV4Config, dim: int, ratio: int, overlap: bool):
        super().__init__()
        width = (2 if overlap else 1) * dim
        self.kv_proj, self.gate_proj = linear(config.hidden_size, width), linear(config.hidden_size, width)
        self.position_bias = nn.Parameter(torch.zeros(ratio, width, dtype=torch.float32))
        self.kv_norm = RMSNorm(dim, config.rms_eps)
        self.eps = config.rms_eps

    def append(self, x: Tensor, stream, step: Step, inv_freq: Tensor) -> None:
        stream.append(self.kv_proj(x).float().contiguous(), self.gate_proj(x).float().contiguous(), step,
                      self.position_bias, self.kv_norm.weight, inv_freq, self.eps)


class IndexerScorer(nn.Module):
    def __init__(self, config: DeepseekV4Config):
        super().__init__()
        self.weights_proj = linear(config.hidden_size, config.index_heads)


class Indexer(Compressor):
    """Lightning indexer (SPEC 4): its own compressor over the same blocks, plus query heads."""

    def __init__(self, config: DeepseekV4Config):
        super().__init__(config, config.index_dim, config.csa_ratio, overlap=True)
        self.q_b_proj = linear(config.q_lora_rank, config.index_heads * config.index_dim)
        self.scorer = IndexerScorer(config)
        self.heads, self.dim, self.topk = config.index_heads, config.index_dim, config.index_topk
        self.ratio = config.csa_ratio

    def select(self, x: Tensor, q_residual: Tensor, state: LayerCache, step: Step, inv_freq: Tensor,
               attention_ops=ops) -> Tensor:
        """Indices [B, S, topk] int32 of the compressed entries each query attends to."""
        self.append(x, state.index_keys, step, inv_freq)
        B, S, _ = x.shape
        q = apply_rope(self.q_b_proj(q_residual).view(B, S, self.heads, self.dim), step.positions, inv_freq)
        weights = self.scorer.weights_proj(x).float() * (self.heads ** -0.5 * self.dim ** -0.5)
        keys = state.index_keys
        if keys.scales is None:
            return attention_ops.indexer_topk(q.to(torch.bfloat16).contiguous(), weights.contiguous(), keys.entries,
                                              step.q_start, self.topk, self.ratio)
        q, q_scales = ops.quantize_e4m3(q)  # per token and head; the scales join the head weights
        return attention_ops.indexer_topk(q.contiguous(), (weights * q_scales).contiguous(), keys.entries,
                                          step.q_start, self.topk, self.ratio, key_scales=keys.scales)


class CSACompressor(Compressor):
    def __init__(self, config: DeepseekV4Config):
        super().__init__(config, config.head_dim, config.csa_ratio, overlap=True)
        self.indexer = Indexer(config)


class HCACompressor(Compressor):
    def __init__(self, config: DeepseekV4Config):
        super().__init__(config, config.head_dim, config.hca_ratio, overlap=False)


class GroupedLinear(nn.Linear):
    """Output projection per group of heads: weight [groups * rank, heads * head_dim / groups]."""

    def __init__(self, dim_in_per_group: int, dim_out: int, groups: int):
        super().__init__(dim_in_per_group, dim_out, bias=False)
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:  # [..., groups, dim_in_per_group] -> [..., groups * rank]
        w = self.weight.view(self.groups, -1, self.weight.shape[-1])
        return torch.einsum("...gi,gri->...gr", x, w).flatten(-2)


class Attention(nn.Module):
    """Attention layer of any kind (SPEC 2, 5): window only, CSA or HCA."""

    def __init__(self, config: DeepseekV4Config, layer: int):
        super().__init__()
        self.config, self.kind, self.ratio = config, config.layer_types[layer], config.ratio(layer)
        H, D, G = config.num_heads, config.head_dim, config.o_groups
        self.q_a_proj = linear(config.hidden_size, config.q_lora_rank)
        self.q_a_norm = RMSNorm(config.q_lora_rank, config.rms_eps)
        self.q_b_proj = linear(config.q_lora_rank, H * D)
        self.kv_proj = linear(config.hidden_size, D)
        self.kv_norm = RMSNorm(D, config.rms_eps)
        self.o_a_proj = GroupedLinear(H * D // G, G * config.o_lora_rank, G)
        self.o_b_proj = linear(G * config.o_lora_rank, config.hidden_size)
        self.sinks = nn.Parameter(torch.zeros(H, dtype=torch.float32))
        self.compressor = {SLIDING: lambda: None, CSA: lambda: CSACompressor(config),
                           HCA: lambda: HCACompressor(config)}[self.kind]()
        self.register_buffer("inv_freq", layer_inv_freq(config, self.kind), persistent=False)

    def forward(self, x: Tensor, state: LayerCache, step: Step, attention_ops=ops) -> Tensor:
        """attention_ops provides sparse_attn, dense_attn and indexer_topk with lcattn.ops' signatures
        (a benchmark passes unfused torch versions)."""
        cfg, bf16 = self.config, torch.bfloat16
        B, S, _ = x.shape
        W = cfg.window
        q_residual = self.q_a_norm(self.q_a_proj(x))
        q = unit_rms(self.q_b_proj(q_residual).view(B, S, cfg.num_heads, cfg.head_dim), cfg.rms_eps)
        q = apply_rope(q, step.positions, self.inv_freq).to(bf16).contiguous()
        new_kv = apply_rope(self.kv_norm(self.kv_proj(x)), step.positions, self.inv_freq).to(bf16)
        # Raw keys of this call: the cached window - 1 positions before each sequence's chunk, then the chunk.
        kv = torch.cat((state.window_kv, new_kv), dim=1)
        kv_start = step.q_start - (W - 1)
        rows = step.seq_lens.long()[:, None] + torch.arange(W - 1, device=x.device)
        state.window_kv.copy_(kv.gather(1, rows[..., None].expand(-1, -1, cfg.head_dim)))  # in place: graph replays
        empty = kv[:, :0]
        if self.kind == SLIDING:
            out, _ = attention_ops.dense_attn(q, kv, kv_start, step.q_start, empty, self.sinks, self.inv_freq,
                                              ratio=0, window=W)
        else:
            self.compressor.append(x, state.ckv, step, self.inv_freq)
            if self.kind == CSA:
                indices = self.compressor.indexer.select(x, q_residual, state, step, self.inv_freq, attention_ops)
                out, _ = attention_ops.sparse_attn(q, kv, kv_start, step.q_start, state.ckv.entries, indices,
                                                   self.sinks, self.inv_freq, window=W)
            else:
                out, _ = attention_ops.dense_attn(q, kv, kv_start, step.q_start, state.ckv.entries, self.sinks,
                                                  self.inv_freq, ratio=self.ratio, window=W)
        grouped = out.to(x.dtype).view(B, S, cfg.o_groups, -1)
        return self.o_b_proj(self.o_a_proj(grouped))


def swiglu(gate: Tensor, up: Tensor, limit: float) -> Tensor:
    """silu(min(gate, limit)) * clamp(up, -limit, limit): the experts' clamped SwiGLU (SPEC 6)."""
    return F.silu(gate.clamp(max=limit)) * up.clamp(-limit, limit)


class SharedExpert(nn.Module):
    def __init__(self, config: DeepseekV4Config):
        super().__init__()
        self.gate_proj = linear(config.hidden_size, config.expert_dim)
        self.up_proj = linear(config.hidden_size, config.expert_dim)
        self.down_proj = linear(config.expert_dim, config.hidden_size)
        self.limit = config.swiglu_limit

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x), self.limit))


class Experts(nn.Module):
    """Routed experts: gate_up_proj [E, 2I, D] with gate and up rows interleaved in blocks of 8 (as
    moe_experts reads it; load_hf_state_dict interleaves the checkpoint's gate-rows-first tensor),
    down_proj [E, D, I]; stored once in bf16, the grouped GEMM's dtype, whatever the model's dtype."""

    def __init__(self, config: DeepseekV4Config):
        super().__init__()
        E, I, D = config.num_experts, config.expert_dim, config.hidden_size
        self.gate_up_proj = nn.Parameter(torch.empty(E, 2 * I, D, dtype=torch.bfloat16))
        self.down_proj = nn.Parameter(torch.empty(E, D, I, dtype=torch.bfloat16))


class Router(nn.Module):
    def __init__(self, config: DeepseekV4Config, hashed: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        if hashed:  # int32, as moe_route reads it (transformers stores int64)
            self.register_buffer("tid2eid", torch.zeros(config.vocab_size, config.experts_per_token, dtype=torch.int32))
        else:
            self.register_buffer("e_score_correction_bias", torch.zeros(config.num_experts, dtype=torch.float32))


class MoE(nn.Module):
    """Routed experts through the grouped GEMM plus the shared expert (SPEC 6)."""

    graph_capturable = True  # no host sync in forward, so a CUDA graph can capture it

    def __init__(self, config: DeepseekV4Config, layer: int):
        super().__init__()
        self.config, self.hashed = config, layer < config.num_hash_layers
        self.gate = Router(config, self.hashed)
        self.experts = Experts(config)
        self.shared_experts = SharedExpert(config)

    def forward(self, x: Tensor, token_ids: Tensor) -> Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        weights, experts = self.route(flat, token_ids)
        routed = self.routed_experts(flat.to(torch.bfloat16).contiguous(), weights, experts)
        return routed.to(x.dtype).view(shape) + self.shared_experts(x)

    def route(self, x: Tensor, token_ids: Tensor):
        """(weights [T, k] fp32, experts [T, k] int32) for the tokens x [T, D]."""
        cfg = self.config
        logits = F.linear(x.float(), self.gate.weight.float())
        if self.hashed:
            return ops.moe_route(logits, cfg.experts_per_token, cfg.route_scale, tid2eid=self.gate.tid2eid,
                                 token_ids=token_ids.reshape(-1).contiguous())
        return ops.moe_route(logits, cfg.experts_per_token, cfg.route_scale,
                             bias=self.gate.e_score_correction_bias.float())

    def routed_experts(self, x: Tensor, weights: Tensor, experts: Tensor) -> Tensor:
        """sum_j weights[t, j] expert_{experts[t, j]}(x[t]) for x [T, D] bf16 (lcattn.parallel overrides it)."""
        return ops.moe_experts(x, weights, experts, self.experts.gate_up_proj, self.experts.down_proj,
                               self.config.swiglu_limit)


def stream_mix(streams: Tensor, fn: Tensor, eps: float) -> Tensor:
    """(flatten(X) / rms(flatten(X))) @ fn^T in fp32 (SPEC 7), as (flatten(X) @ fn^T) / rms (the scale
    is per token). bf16 streams of a prefill on CUDA: one bf16 GEMM with fp32 sums against fn split
    into two bf16 parts (fn = hi + lo to about 2^-17), so the streams are read once, with no fp32 copy
    of them (about 0.5 ms a site less at 8192 tokens on the H100). A decode step keeps the fp32
    product: its compiled step took 2.70 ms with the split against 2.61 without (one run each)."""
    x = streams.flatten(2)
    if x.is_cuda and x.dtype == torch.bfloat16 and x.shape[:-1].numel() >= 256:
        fn = fn.float()
        hi = fn.to(torch.bfloat16)
        parts = torch.cat((hi, (fn - hi.float()).to(torch.bfloat16)))  # [2M, n D]
        both = torch.mm(x.reshape(-1, x.shape[-1]), parts.t(), out_dtype=torch.float32)
        mix = (both[:, :fn.shape[0]] + both[:, fn.shape[0]:]).view(*x.shape[:-1], fn.shape[0])
    else:
        mix = F.linear(x.float(), fn.float())
    return mix * torch.rsqrt(mean_square(x) + eps)


def mhc_dtype(streams: Tensor) -> torch.dtype:
    """The type the mHC ops take the streams in: theirs when bf16 or fp32, else fp32."""
    return streams.dtype if streams.dtype in (torch.bfloat16, torch.float32) else torch.float32


def collapse(streams: Tensor, pre: Tensor) -> Tensor:
    """sum_i pre_i X_i, in fp32, one pass over the streams."""
    dtype = mhc_dtype(streams)
    return ops.hc_collapse(streams.to(dtype).contiguous(), pre.float().contiguous()).to(streams.dtype)


class HyperConnection(nn.Module):
    """mHC weights of one site (SPEC 7): returns (post, comb, collapsed input)."""

    def __init__(self, config: DeepseekV4Config):
        super().__init__()
        n = config.hc_mult
        self.n, self.iters, self.eps, self.rms_eps = n, config.hc_sinkhorn_iters, config.hc_eps, config.rms_eps
        self.fn = nn.Parameter(torch.empty((2 + n) * n, n * config.hidden_size, dtype=torch.float32))
        self.base = nn.Parameter(torch.zeros((2 + n) * n, dtype=torch.float32))
        self.scale = nn.Parameter(torch.ones(3, dtype=torch.float32))

    def forward(self, streams: Tensor):
        n = self.n
        mix = stream_mix(streams, self.fn, self.rms_eps)
        pre_w, post_w, comb_w = mix.split([n, n, n * n], dim=-1)
        pre_b, post_b, comb_b = self.base.split([n, n, n * n])
        pre = torch.sigmoid(pre_w * self.scale[0] + pre_b) + self.eps
        post = 2 * torch.sigmoid(post_w * self.scale[1] + post_b)
        logits = (comb_w.unflatten(-1, (n, n)) * self.scale[2] + comb_b.view(n, n)).float()
        comb = ops.hc_sinkhorn(logits, self.iters, self.eps)
        return post, comb, collapse(streams, pre)


def mix_streams(streams: Tensor, post: Tensor, comb: Tensor, out: Tensor) -> Tensor:
    """X'_j = post_j * f(h) + sum_i comb_ij X_i (SPEC 7), in fp32, one pass over the streams."""
    dtype = mhc_dtype(streams)
    y = ops.hc_post(streams.to(dtype).contiguous(), out.to(dtype).contiguous(), post.float().contiguous(),
                    comb.float().contiguous())
    return y.to(streams.dtype)


class DecoderLayer(nn.Module):
    def __init__(self, config: DeepseekV4Config, layer: int):
        super().__init__()
        self.self_attn = Attention(config, layer)
        self.mlp = MoE(config, layer)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_eps)
        self.attn_hc = HyperConnection(config)
        self.ffn_hc = HyperConnection(config)

    def forward(self, streams: Tensor, state: LayerCache, step: Step) -> Tensor:
        post, comb, h = self.attn_hc(streams)
        streams = mix_streams(streams, post, comb, self.self_attn(self.input_layernorm(h), state, step))
        post, comb, h = self.ffn_hc(streams)
        return mix_streams(streams, post, comb, self.mlp(self.post_attention_layernorm(h), step.token_ids))


class HyperHead(nn.Module):
    """Collapses the residual streams before the final norm (SPEC 7)."""

    def __init__(self, config: DeepseekV4Config):
        super().__init__()
        n = config.hc_mult
        self.eps, self.rms_eps = config.hc_eps, config.rms_eps
        self.hc_fn = nn.Parameter(torch.empty(n, n * config.hidden_size, dtype=torch.float32))
        self.hc_base = nn.Parameter(torch.zeros(n, dtype=torch.float32))
        self.hc_scale = nn.Parameter(torch.ones(1, dtype=torch.float32))

    def forward(self, streams: Tensor) -> Tensor:
        mix = stream_mix(streams, self.hc_fn, self.rms_eps)
        return collapse(streams, torch.sigmoid(mix * self.hc_scale.float() + self.hc_base.float()) + self.eps)


class DeepseekV4Model(nn.Module):
    def __init__(self, config: DeepseekV4Config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_eps)
        self.hc_head = HyperHead(config)


class DeepseekV4ForCausalLM(nn.Module):
    """forward(input_ids [B, S], cache=None, lengths=None, last=False) -> logits [B, S, vocab], or with
    last=True only each row's logits at its last valid token [B, vocab] (the LM head runs on those
    alone: at an 8192-token prefill chunk it is the largest GEMM).

    With a cache, the call continues each sequence where the cache left it; `lengths` gives the
    valid tokens of each row of input_ids (default all S), so a batch may hold sequences of
    different lengths (rows past a sequence's length give logits to ignore).
    """

    def __init__(self, config: DeepseekV4Config):
        super().__init__()
        self.config = config
        self.model = DeepseekV4Model(config)
        self.lm_head = linear(config.hidden_size, config.vocab_size)

    def new_cache(self, batch: int, max_context: Optional[int] = None) -> DeepseekV4Cache:
        """A cache for `batch` sequences; max_context fixes its capacity (positions per sequence)."""
        return DeepseekV4Cache(self.config, batch, self.lm_head.weight.device, max_context)

    def decoder(self, batch: int, max_context: int, graph: Optional[bool] = None, compile: bool = False) -> "Decoder":
        """Prefill and decode for `batch` sequences of at most max_context positions; with graph=True
        each decode step replays one captured CUDA graph (default on CUDA, unless LCATTN_DECODE_GRAPH=0);
        compile=True runs the decode step through torch.compile."""
        return Decoder(self, batch, max_context, graph, compile)

    @torch.no_grad()
    def forward(self, input_ids: Tensor, cache: Optional[DeepseekV4Cache] = None,
                lengths: Optional[List[int]] = None, last: bool = False) -> Tensor:
        # Every check before the first layer writes the cache: a call that fails leaves it as it was.
        check_token_ids(input_ids, "input_ids")
        cache = self.new_cache(input_ids.shape[0]) if cache is None else cache
        input_ids = input_ids.long()  # the hash-routed MoE looks its experts up by int64 id
        step = cache.step(input_ids, lengths)
        x = self.model.embed_tokens(input_ids)
        streams = x.unsqueeze(2).expand(-1, -1, self.config.hc_mult, -1).contiguous()
        for layer, state in zip(self.model.layers, cache.layers):
            streams = layer(streams, state, step)
        cache.advance(step)
        if last:  # [B, 1, n, D]: each row's streams at its last valid token (a row without one: its first)
            streams = torch.stack([streams[b, max(end, 1) - 1] for b, end in enumerate(step.host_lens)]).unsqueeze(1)
        logits = self.lm_head(self.model.norm(self.model.hc_head(streams)))
        return logits[:, 0] if last else logits

    def _apply(self, fn, recurse=True):
        """Module.to(dtype), half() and bfloat16() convert every floating tensor; the fixed-dtype ones
        (FIXED_DTYPE, and the buffers: RoPE tables, routing bias, hash table) keep their dtype and follow
        only the device, so a converted model runs as one built in that dtype."""
        fixed = {id(t): t.dtype for name, t in self.named_parameters() if name.endswith(FIXED_DTYPE)}
        fixed.update({id(t): t.dtype for t in self.buffers()})

        def keep_fixed(t):
            if id(t) not in fixed:
                return fn(t)
            target = fn(torch.empty(0, dtype=t.dtype, device=t.device))  # where fn sends t, without converting it
            return fn(t) if target.dtype == fixed[id(t)] else t.to(device=target.device)
        return super()._apply(keep_fixed, recurse)

    @torch.no_grad()
    def init_weights(self, std: float = 0.02, generator: Optional[torch.Generator] = None) -> "DeepseekV4ForCausalLM":
        """Random weights for demos and tests (normal(0, std) matrices, unit norms, zero biases, a
        random hash-routing table of distinct experts per token)."""
        cfg = self.config
        for name, table in self.named_buffers():
            if name.endswith("tid2eid"):
                scores = torch.rand(cfg.vocab_size, cfg.num_experts, device=table.device, generator=generator)
                table.copy_(scores.argsort(dim=-1)[:, :cfg.experts_per_token])
        for name, p in self.named_parameters():
            if name.endswith(("norm.weight", "layernorm.weight", "scale", "hc_scale")):
                p.fill_(1.0)
            elif name.endswith(("base", "hc_base", "sinks", "position_bias")):
                p.zero_()
            else:
                p.normal_(0.0, std, generator=generator)
        return self

    @classmethod
    def from_hf(cls, hf_model) -> "DeepseekV4ForCausalLM":
        """Same weights as a transformers DeepseekV4ForCausalLM (on its device, in its dtype)."""
        weight = hf_model.lm_head.weight
        model = cls(DeepseekV4Config.from_hf(hf_model.config)).to(device=weight.device)
        model.load_hf_state_dict(hf_model.state_dict())
        return model

    def load_hf_state_dict(self, state_dict: dict) -> None:
        """Loads a transformers-format state dict; multi-token-prediction (`mtp.`) weights are skipped.
        Tensors are copied onto the model's device in the checkpoint's dtype (that of lm_head.weight),
        except those of a fixed dtype: fp32 (norms, sinks, mHC, biases), bf16 (the routed experts) and
        int32 (the hash-routing table). The experts' gate and up rows are interleaved
        (ops.interleave_gate_up). The RoPE tables are rebuilt, so a model built on the meta device,
        made expert-parallel and then given memory with to_empty(device) loads whole."""
        own = self.state_dict()
        wanted = {k: v for k, v in state_dict.items() if not (k.startswith("mtp.") or ".mtp." in k)}
        for prefix, module in self.named_modules():  # expert-parallel layers keep their own experts' rows
            if hasattr(module, "take_shard"):
                module.take_shard(prefix + ".", wanted)
        missing, unexpected = sorted(set(own) - set(wanted)), sorted(set(wanted) - set(own))
        if missing or unexpected:
            raise ValueError(f"[lcattn] state dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for name, tensor in wanted.items():
            if tuple(own[name].shape) != tuple(tensor.shape):
                raise ValueError(f"[lcattn] {name}: shape {tuple(tensor.shape)}, expected {tuple(own[name].shape)}")
        dtype = wanted["lm_head.weight"].dtype  # the checkpoint's (transformers keeps a few weights fp32 in fp16)
        device = self.lm_head.weight.device
        if device.type == "meta":
            raise ValueError("[lcattn] load_hf_state_dict: the model is on the meta device; build it on the device "
                             "to load onto")
        # Copies on the model's device, in the checkpoint's dtype (assign keeps it): the caller's tensors
        # are not shared, and the model's computed buffers (RoPE tables) stay beside its parameters.
        converted = {k: v.to(device=device, dtype=own[k].dtype if k.endswith(FIXED_DTYPE) else dtype, copy=True)
                     for k, v in wanted.items()}
        for name in converted:
            if name.endswith("experts.gate_up_proj"):
                converted[name] = ops.interleave_gate_up(converted[name])
        self.load_state_dict(converted, strict=True, assign=True)
        self.rebuild_rope_tables()

    def rebuild_rope_tables(self) -> None:
        """The RoPE tables, which no state dict holds, computed again: for a model made with to_empty."""
        device = self.lm_head.weight.device
        for module in self.modules():
            if isinstance(module, Attention):
                module.inv_freq = layer_inv_freq(self.config, module.kind).to(device)

    @classmethod
    def from_pretrained(cls, folder: str, device="cpu", dtype: torch.dtype = torch.bfloat16,
                        log=print) -> "DeepseekV4ForCausalLM":
        """DeepSeek-V4's published checkpoint (a folder with config.json and its safetensors files, the
        weights in e4m3 and e2m1 with their scales; modules/checkpoint.py): the config read by
        transformers' AutoConfig, the weights dequantized into `dtype` (the fixed-dtype tensors keep
        theirs) on `device`, one file at a time (`log` gets a line a file; None for none)."""
        try:
            from transformers import AutoConfig
        except ImportError as e:
            raise ImportError("[lcattn] from_pretrained reads config.json with transformers (pip install "
                              "transformers); or build the model from a DeepseekV4Config and call "
                              "load_checkpoint") from e
        with torch.device("meta"):
            model = cls(DeepseekV4Config.from_hf(AutoConfig.from_pretrained(folder)))
        model = model.to_empty(device=device).to(dtype)
        model.load_checkpoint(folder, log)
        return model

    def load_checkpoint(self, folder: str, log=print) -> None:
        """Reads DeepSeek-V4's published checkpoint in `folder` into this model (modules/checkpoint.py);
        an expert-parallel model reads only its own experts."""
        from lcattn.modules.checkpoint import load_checkpoint
        load_checkpoint(self, folder, log)

    def hf_state_dict(self) -> dict:
        """The state dict in transformers' format, as load_hf_state_dict takes it: the experts' gate rows
        first, then the up rows (the model's own state_dict keeps them interleaved)."""
        return {k: ops.deinterleave_gate_up(v) if k.endswith("experts.gate_up_proj") else v
                for k, v in self.state_dict().items()}


# Parameters that stay fp32 whatever the model dtype, as in the published model.
FP32_PARAMETERS = ("norm.weight", "layernorm.weight", "sinks", "position_bias", ".fn", ".base", ".scale", "hc_fn",
                   "hc_base", "hc_scale", "e_score_correction_bias")
BF16_PARAMETERS = ("experts.gate_up_proj", "experts.down_proj")  # the grouped GEMM's operands
# Tensors whose dtype the model fixes whatever the checkpoint's or a conversion's: FP32_PARAMETERS,
# BF16_PARAMETERS and the hash-routing table (int32, moe_route's).
FIXED_DTYPE = FP32_PARAMETERS + BF16_PARAMETERS + ("tid2eid",)
