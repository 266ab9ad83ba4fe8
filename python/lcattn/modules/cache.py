"""Inference state of a batch of sequences: per layer the raw window, the compressed entries, the
indexer keys and the compressors' carry-over rings, so that prefill, chunked prefill and decode
give the same results. Every tensor is updated in place; with a fixed capacity (max_context) the
entries are allocated once, so a decode step's tensors keep their addresses and a CUDA graph of the
step can be replayed."""
import operator
from typing import List, Optional

import torch

from lcattn import ops
from lcattn.modules.config import CSA, SLIDING, DeepseekV4Config

BF16, E4M3, KV_FP8 = "bf16", "e4m3", "kv_fp8"


class CompressedStream:
    """Entries of one compressor (entry i at row i) and its rings. The entries are in one of three
    forms: bf16 [B, capacity, dim]; e4m3 [B, capacity, dim] with scales [B, capacity] fp32 (the
    indexer's fp8 form); or kv_fp8, uint8 [B, capacity, ops.kv_fp8_bytes(dim, rope_dim)] (the
    attention entries' fp8 form, SPEC 5.1)."""

    def __init__(self, batch: int, ratio: int, dim: int, overlap: bool, device: torch.device, capacity: int = 0,
                 form: str = BF16, rope_dim: int = 0):
        if form not in (BF16, E4M3, KV_FP8):
            raise ValueError(f"[lcattn] CompressedStream: form must be {BF16}, {E4M3} or {KV_FP8}, got {form!r}")
        self.ratio, self.overlap = ratio, overlap
        self.ring_kv, self.ring_score = ops.compress_state(batch, ratio, (2 if overlap else 1) * dim, overlap, device)
        if form == KV_FP8:
            self.entries = torch.zeros(batch, capacity, ops.kv_fp8_bytes(dim, rope_dim), dtype=torch.uint8,
                                       device=device)
        else:
            dtype = torch.float8_e4m3fn if form == E4M3 else torch.bfloat16
            self.entries = torch.zeros(batch, capacity, dim, dtype=dtype, device=device)
        self.scales = torch.zeros(batch, capacity, device=device) if form == E4M3 else None

    def append(self, kv: torch.Tensor, score: torch.Tensor, step: "Step", ape: torch.Tensor, norm_weight: torch.Tensor,
               inv_freq: torch.Tensor, eps: float) -> None:
        """Pools the chunk's new tokens (kv, score [B, S, width] fp32) into entries."""
        need = step.end_max // self.ratio
        capacity = self.entries.shape[1]
        if need > capacity:  # (no fixed capacity) grow by a quarter at least: long prefills copy O(log) times
            rows = max(need, capacity + capacity // 4)
            self.entries = grown(self.entries, rows)
            self.scales = grown(self.scales, rows) if self.scales is not None else None
        ops.compress_kv(kv, score, step.seq_lens, step.q_start, self.ring_kv, self.ring_score, ape, norm_weight,
                        inv_freq, self.entries, self.ratio, self.overlap, eps, self.scales)

    def entry_bytes(self) -> int:
        """Bytes of one entry, its scale included."""
        return self.entries.shape[2] * self.entries.element_size() + (4 if self.scales is not None else 0)

    def nbytes(self, entries: int) -> int:
        return entries * self.entry_bytes() + self.ring_kv.nbytes + self.ring_score.nbytes


def grown(t: torch.Tensor, rows: int) -> torch.Tensor:
    """t [B, n, ...] in a zero tensor of `rows` rows along dim 1."""
    out = torch.zeros(t.shape[0], rows, *t.shape[2:], dtype=t.dtype, device=t.device)
    out[:, :t.shape[1]] = t
    return out


class LayerCache:
    def __init__(self, config: DeepseekV4Config, layer: int, batch: int, device: torch.device, max_context: int = 0):
        kind = config.layer_types[layer]
        # The last window - 1 raw keys (= values) before the next token: row j at position len - (window-1) + j.
        self.window_kv = torch.zeros(batch, config.window - 1, config.head_dim, dtype=torch.bfloat16, device=device)
        ratio = config.ratio(layer)
        self.ckv: Optional[CompressedStream] = None  # the main compressor's entries (the ops' ckv)
        self.index_keys: Optional[CompressedStream] = None  # the indexer's (the ops' keys)
        if kind != SLIDING:
            self.ckv = CompressedStream(batch, ratio, config.head_dim, kind == CSA, device, max_context // ratio,
                                        KV_FP8 if config.kv_fp8 else BF16, config.rope_dim)
        if kind == CSA:
            self.index_keys = CompressedStream(batch, ratio, config.index_dim, True, device, max_context // ratio,
                                               E4M3 if config.index_fp8 else BF16)


class Step:
    """Positions of one forward call: sequence b adds seq_lens[b] tokens at q_start[b]."""

    def __init__(self, q_start: torch.Tensor, seq_lens: torch.Tensor, host_start: List[int], host_lens: List[int],
                 token_ids: torch.Tensor):
        self.q_start, self.seq_lens, self.token_ids, self.host_lens = q_start, seq_lens, token_ids, host_lens
        self.end_max = max([s + n for s, n in zip(host_start, host_lens)] + [0])
        S = token_ids.shape[1]
        self.positions = q_start.long()[:, None] + torch.arange(S, device=q_start.device)  # [B, S]


def valid_lengths(lengths: List[int], B: int, S: int) -> List[int]:
    """lengths as B ints in [0, S], or an [lcattn] error."""
    try:
        lens = [operator.index(n) for n in lengths]  # ints (and integer tensors), not 2.7 read as 2
    except TypeError:
        raise ValueError(f"[lcattn] lengths must be {B} ints in [0, {S}], got {list(lengths)}") from None
    if len(lens) != B or any(n < 0 or n > S for n in lens):
        raise ValueError(f"[lcattn] lengths must be {B} ints in [0, {S}], got {lens}")
    return lens


def check_token_ids(ids: torch.Tensor, name: str, batch: Optional[int] = None) -> None:
    """An [lcattn] error unless ids are int64 or int32 token ids: [B, S], or `batch` of them in any shape."""
    shape = "[B, S]" if batch is None else f"[{batch}]"
    if ids.dtype not in (torch.int64, torch.int32) or (ids.dim() != 2 if batch is None else ids.numel() != batch):
        raise ValueError(f"[lcattn] {name} must be int64 or int32 token ids {shape}, got {ids.dtype} "
                         f"{tuple(ids.shape)}")


class DeepseekV4Cache:
    """Per-layer state plus each sequence's length. Sequences may have different lengths.

    max_context (positions per sequence, prompt and decoded tokens) fixes the capacity: the entries
    are allocated once and a sequence that would pass it gets an error. Without it (None) the entries
    grow as the sequences do, up to the model's max_positions."""

    def __init__(self, config: DeepseekV4Config, batch: int, device: torch.device, max_context: Optional[int] = None):
        if batch < 1:
            raise ValueError(f"[lcattn] a cache holds at least 1 sequence, got batch {batch}")
        if max_context is not None and not 0 < max_context <= config.max_positions:
            raise ValueError(f"[lcattn] max_context must be in [1, {config.max_positions}], got {max_context}")
        self.config, self.max_context = config, max_context
        self.layers = [LayerCache(config, i, batch, device, max_context or 0) for i in range(config.num_layers)]
        self.lengths = torch.zeros(batch, dtype=torch.int32, device=device)
        self.host_lengths = [0] * batch  # the same, on the host: sizes without a device sync

    def check_room(self, lens: List[int]) -> None:
        """Raises unless every sequence b can take lens[b] more tokens."""
        limit, what = ((self.max_context, "the cache's max_context") if self.max_context is not None
                       else (self.config.max_positions, "max_positions"))
        ends = [h + n for h, n in zip(self.host_lengths, lens)]  # a list, as torch.compile traces it
        if ends and max(ends) > limit:
            raise ValueError(f"[lcattn] a sequence would pass {what} = {limit} (lengths {self.host_lengths}, "
                             f"adding {lens})")

    def step(self, input_ids: torch.Tensor, lengths: Optional[List[int]]) -> Step:
        """The call's positions and lengths, or an [lcattn] error before anything is written."""
        B, S = input_ids.shape
        if B != len(self.host_lengths):
            raise ValueError(f"[lcattn] the cache holds {len(self.host_lengths)} sequences, got input_ids of {B}")
        if S == 0:
            raise ValueError(f"[lcattn] input_ids must hold at least one position, got shape {(B, S)}")
        device = self.lengths.device
        if lengths is None:  # every row full: filled on the device, no host-to-device copy
            lens = [S] * B
            seq_lens = torch.full((B,), S, dtype=torch.int32, device=device)
        else:
            lens = valid_lengths(lengths, B, S)
            seq_lens = torch.tensor(lens, dtype=torch.int32, device=device)
        self.check_room(lens)
        return Step(self.lengths.clone(), seq_lens, self.host_lengths, lens, input_ids)

    def advance(self, step: Step) -> None:
        self.lengths += step.seq_lens
        self.host_lengths = [h + n for h, n in zip(self.host_lengths, step.host_lens)]

    def nbytes(self) -> int:
        """Bytes the cache needs for its current lengths (windows, visible entries, rings)."""
        total = 0
        for layer in self.layers:
            total += layer.window_kv.nbytes
            for stream in (layer.ckv, layer.index_keys):
                if stream is not None:
                    total += stream.nbytes(sum(n // stream.ratio for n in self.host_lengths))
        return total
