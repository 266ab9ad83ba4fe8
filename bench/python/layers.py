"""Layer-level cases of the benchmark driver: one V4-Flash attention layer (CSA or HCA) on lcattn ops
at a given context, prefill and decode, beside the same layer on unfused PyTorch ops where it fits.

Prefill runs the whole context through the layer in chunks (as the model does); decode starts from a
cache filled with random entries at that context (prefilling 64 sequences of 1M tokens would take
hours) and times single-token steps at batch 1 and 64, as CUDA-graph replays (the unfused layer's
eagerly: it reads sizes on the host).
"""
import math
from types import SimpleNamespace
from typing import List

import torch
from cases import DEV

from lcattn import ops, reference
from lcattn.modules import CSA, HCA, DeepseekV4Config
from lcattn.modules import model as model_module
from lcattn.modules.cache import LayerCache, Step
from lcattn.testing.bench import graphed, median_ms

CHUNK = 8192


def attention_layer(kind: str, seed: int = 0, index_fp8: bool = False, kv_fp8: bool = False):
    """A V4-Flash attention layer of one kind with random bf16 weights (fp32 norms and sinks); with
    index_fp8 its indexer in the fp8 form, with kv_fp8 its compressed entries in the kv_fp8 form."""
    config = DeepseekV4Config.flash().with_layers([kind])
    config.index_fp8, config.kv_fp8 = index_fp8, kv_fp8
    torch.manual_seed(seed)
    with torch.device(DEV):
        layer = model_module.Attention(config, 0)
        for name, p in layer.named_parameters():
            if name.endswith("norm.weight"):
                p.data.fill_(1.0)
            elif name.endswith(("sinks", "position_bias")):
                p.data.normal_(0.0, 0.5)
            else:
                p.data = p.data.normal_(0.0, 0.02).to(torch.bfloat16)
    return config, layer


def step_for(batch: int, start: int, length: int) -> Step:
    q_start = torch.full((batch,), start, dtype=torch.int32, device=DEV)
    seq_lens = torch.full((batch,), length, dtype=torch.int32, device=DEV)
    ids = torch.zeros(batch, length, dtype=torch.long, device=DEV)
    return Step(q_start, seq_lens, [start] * batch, [length] * batch, ids)


@torch.no_grad()
def prefill_seconds(config, layer, context: int, attention_ops=ops) -> float:
    """Wall time of one sequence's prefill through the layer, chunk by chunk."""
    state = LayerCache(config, 0, 1, torch.device(DEV))
    xs = [torch.randn(1, min(CHUNK, context - s), config.hidden_size, device=DEV, dtype=torch.bfloat16)
          for s in range(0, min(context, 2 * CHUNK), CHUNK)]  # two chunks of inputs, reused
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for i, s in enumerate(range(0, context, CHUNK)):
        x = xs[i % len(xs)][:, : min(CHUNK, context - s)]
        layer(x, state, step_for(1, s, x.shape[1]), attention_ops)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def filled_state(config, batch: int, context: int, decode_steps: int) -> LayerCache:
    """A cache as if `context` tokens were prefilled: random window keys and entries, room to decode."""
    state = LayerCache(config, 0, batch, torch.device(DEV))
    state.window_kv.normal_()
    for stream in (state.ckv, state.index_keys):
        if stream is not None:
            rows = (context + decode_steps) // stream.ratio + 1
            if stream.entries.dtype == torch.uint8:  # the kv_fp8 form of attention entries
                entries = torch.randn(batch, rows, config.head_dim, device=DEV)
                stream.entries = ops.quantize_kv_fp8(entries, config.rope_dim)
                continue
            entries = torch.randn(batch, rows, stream.entries.shape[2], device=DEV)
            if stream.scales is None:
                stream.entries = entries.bfloat16()
            else:  # the fp8 form: e4m3 entries with a scale each
                stream.entries, stream.scales = ops.quantize_e4m3(entries)
    return state


@torch.no_grad()
def decode_ms(config, layer, batch: int, context: int, steps: int = 8, attention_ops=ops, graph: bool = True,
              compiled: bool = True) -> float:
    """Median time of a single-token step of `batch` sequences at `context` positions: replays of the
    step's CUDA graph, through torch.compile unless compiled=False (the model's decode path; each
    replay writes the same position again, the same work), or with graph=False eager steps at
    advancing positions (the unfused layer reads sizes on the host, so it cannot be captured)."""
    state = filled_state(config, batch, context, steps + 2)
    x = torch.randn(batch, 1, config.hidden_size, device=DEV, dtype=torch.bfloat16)
    if graph:
        step = step_for(batch, context, 1)
        run = decode_step(layer, x, state, step, attention_ops, compiled)
        return median_ms([graphed(run)], steps)
    times = []
    for i in range(steps + 2):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        layer(x, state, step_for(batch, context + i, 1), attention_ops)
        end.record()
        end.synchronize()
        if i >= 2:  # two warm-up steps
            times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def decode_step(layer, x, state, step, attention_ops=ops, compiled: bool = True):
    """The layer's step on fixed inputs as a function of nothing, through torch.compile(fullgraph=True)
    when compiled (run twice, so that it has compiled before a capture)."""
    def run():
        return layer(x, state, step, attention_ops)
    if compiled:
        torch._dynamo.config.recompile_limit = 64  # a compiled step per layer kind, batch and context
        run = torch.compile(run, fullgraph=True)
        run()
        run()
    return run


# ---- the same layer on unfused PyTorch ops --------------------------------------------------------

ROWS = 64  # query rows per block, so the fp32 intermediates stay a few GB


def _window_rows(kv, kv_start, q_start, s0, s1, window):
    """The kv rows the query rows [s0, s1) can see, and their kv_start."""
    L = kv.shape[1]
    lo = max(0, min((q_start + s0 - window + 1 - kv_start).tolist()))
    hi = min(L, max((q_start + s1 - kv_start).tolist()))
    return kv[:, lo:max(hi, lo)], kv_start + lo


def _unfused_attention(q, kv, kv_start, q_start, ckv, sink, inv_freq, scale, window, indices=None, ratio=0):
    if ckv.dtype == torch.uint8:  # entries in the kv_fp8 form
        ckv = ops.dequantize_kv_fp8(ckv, q.shape[-1], 2 * inv_freq.numel())
    outs, lses = [], []
    for s0 in range(0, q.shape[1], ROWS):
        s1 = min(s0 + ROWS, q.shape[1])
        rows, rows_start = _window_rows(kv, kv_start, q_start, s0, s1, window)
        out, lse = reference.attention(q[:, s0:s1], rows, rows_start, q_start + s0, ckv, sink, inv_freq, scale,
                                       window, None if indices is None else indices[:, s0:s1], ratio)
        outs.append(out.bfloat16())
        lses.append(lse)
    return torch.cat(outs, 1), torch.cat(lses, 1)


def _unfused_indexer_topk(q, weights, keys, q_start, k, ratio=4, block_rows=0, key_scales=None):
    return torch.cat([reference.topk_indices(reference.indexer_scores(q[:, s0:s0 + ROWS], weights[:, s0:s0 + ROWS],
                                                                      keys, q_start + s0, ratio, key_scales), k)
                      for s0 in range(0, q.shape[1], ROWS)], 1)


# The attention ops of Attention.forward on reference math (the compressor stays lcattn's: it has no
# unfused chunked form).
UNFUSED_OPS = SimpleNamespace(
    sparse_attn=lambda q, kv, kvs, qs, ckv, idx, sink, f, scale=None, window=128: _unfused_attention(
        q, kv, kvs, qs, ckv, sink, f, scale, window, indices=idx),
    dense_attn=lambda q, kv, kvs, qs, ckv, sink, f, ratio, scale=None, window=128: _unfused_attention(
        q, kv, kvs, qs, ckv, sink, f, scale, window, ratio=ratio),
    indexer_topk=_unfused_indexer_topk,
)


# ---- cases ----------------------------------------------------------------------------------------

DEFAULT_CONTEXTS = [8192, 32768, 131072, 524288, 1048576]
UNFUSED_MAX_PREFILL = 8192    # the unfused layer at 8K already takes seconds
UNFUSED_MAX_DECODE = 131072


def layer_rows(contexts: List[int], unfused: bool = True, index_fp8: bool = False, kv_fp8: bool = False):
    """Yields one dict per (layer kind, context): prefill s, decode ms at batch 1 and 64, peak GiB,
    and the unfused layer's numbers where it fits."""
    for kind in (CSA, HCA):
        config, layer = attention_layer(kind, index_fp8=index_fp8, kv_fp8=kv_fp8)
        prefill_seconds(config, layer, CHUNK)  # warm-up: module loads, kernel attributes, allocator
        decode_ms(config, layer, 1, CHUNK, steps=1)
        for context in contexts:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            row = dict(layer=kind, context=context, prefill_s=prefill_seconds(config, layer, context))
            row["prefill_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            for batch in (1, 64):
                torch.cuda.empty_cache()
                row[f"decode_ms_b{batch}"] = decode_ms(config, layer, batch, context)
            if unfused:
                if context <= UNFUSED_MAX_PREFILL:
                    row["unfused_prefill_s"] = prefill_seconds(config, layer, context, UNFUSED_OPS)
                if context <= UNFUSED_MAX_DECODE:
                    for batch in (1, 64):
                        row[f"unfused_decode_ms_b{batch}"] = decode_ms(config, layer, batch, context, 3, UNFUSED_OPS,
                                                                       graph=False)
            yield row
        del layer
        torch.cuda.empty_cache()


def tokens_per_s(row) -> float:
    return row["context"] / row["prefill_s"] if row.get("prefill_s") else math.nan
