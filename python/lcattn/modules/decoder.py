"""Prefill, then decode one token per sequence per step, from a cache of fixed capacity. With a CUDA
graph a decode step is captured once and replayed: the token ids are copied into a static input,
the logits come back in a static output, and no host work runs but the replay itself. The graph is
on by default on CUDA (graph=False, or LCATTN_DECODE_GRAPH=0, runs eager steps). compile=True runs
the decode step through torch.compile(model, fullgraph=True), which fuses the glue between the
lcattn ops (norms, RoPE, mHC, router) into fewer kernels; prefill stays eager (its chunk shapes
vary)."""
import os
from typing import List, Optional

import torch
from torch import Tensor

from lcattn.modules.cache import check_token_ids, valid_lengths


class Decoder:
    """model.decoder(batch, max_context): prefill(prompts) once, then step(tokens) per token.

    Sequences may have different lengths; every step adds one token to each. The logits step()
    returns are overwritten by the next step (clone them to keep them)."""

    # generate looks at whether every sequence has ended once per this many tokens (a host sync each).
    ENDED_CHECK_TOKENS = 16

    def __init__(self, model, batch: int, max_context: int, graph: Optional[bool] = None, compile: bool = False):
        self.model, self.batch = model, batch
        self.forward = torch.compile(model, fullgraph=True) if compile else model  # the decode step's
        # Eager steps before the capture: a compiled step may compile again on its second call.
        self.warmup_steps, self.steps = (2 if compile else 1), 0
        self.cache = model.new_cache(batch, max_context=max_context)
        device = self.cache.lengths.device
        capturable = all(getattr(m, "graph_capturable", True) for m in model.modules())
        self.collective = any(getattr(m, "collective", False) for m in model.modules())  # expert-parallel
        if graph is None:
            graph = device.type == "cuda" and capturable and os.environ.get("LCATTN_DECODE_GRAPH") != "0"
        self.use_graph = graph
        if self.use_graph and not capturable:
            raise ValueError("[lcattn] an expert-parallel model reads its all-to-all split sizes on the host: "
                             "it cannot decode in a CUDA graph (graph=False)")
        if self.use_graph and device.type != "cuda":
            raise ValueError("[lcattn] a CUDA graph needs the model on a CUDA device")
        self.ids = torch.zeros(batch, 1, dtype=torch.long, device=device)  # the step's static input
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.logits: Optional[Tensor] = None  # the graph's static output, [batch, vocab]

    @torch.no_grad()
    def prefill(self, input_ids: Tensor, lengths: Optional[List[int]] = None, chunk: int = 8192) -> Tensor:
        """Runs the prompts (row b of input_ids [batch, S], its first lengths[b] tokens, default all S)
        in calls of about `chunk` tokens (all sequences together: it bounds the activations and the
        logits); returns each sequence's logits at its last prompt token [batch, vocab] (zeros for an
        empty prompt)."""
        check_token_ids(input_ids, "input_ids")
        B, S = input_ids.shape
        if B != self.batch:
            raise ValueError(f"[lcattn] the decoder holds {self.batch} sequences, got input_ids of {B}")
        lens = [S] * B if lengths is None else valid_lengths(lengths, B, S)
        self.cache.check_room(lens)  # the whole prompt, before any chunk runs
        last: List[Optional[Tensor]] = [None] * B
        positions = max(1, chunk // B)
        for start in range(0, S, positions):
            piece = input_ids[:, start:start + positions]
            n = [min(max(length - start, 0), piece.shape[1]) for length in lens]
            if not any(n) and not self.collective:  # an expert-parallel rank calls as often as the others
                break
            logits = self.model(piece, self.cache, lengths=None if lengths is None else n, last=True)
            for b in range(B):
                if n[b] and start + n[b] == lens[b]:
                    last[b] = logits[b].clone()
        vocab = self.model.config.vocab_size
        zeros = torch.zeros(vocab, device=input_ids.device, dtype=self.model.lm_head.weight.dtype)
        return torch.stack([zeros if row is None else row for row in last])

    @torch.no_grad()
    def step(self, token_ids: Tensor) -> Tensor:
        """Appends token_ids [batch] (one per sequence); returns the next-token logits [batch, vocab]."""
        check_token_ids(token_ids, "token_ids", self.batch)
        self.ids.copy_(token_ids.reshape(self.batch, 1))
        if not self.use_graph:
            return self.forward(self.ids, self.cache)[:, 0]
        if self.graph is None:
            return self.warm_up_or_capture()
        ones = [1] * self.batch
        self.cache.check_room(ones)
        self.graph.replay()
        self.cache.host_lengths = [h + 1 for h in self.cache.host_lengths]
        return self.logits

    @torch.no_grad()
    def generate(self, input_ids: Tensor, lengths: Optional[List[int]] = None, max_new_tokens: int = 32,
                 eos_token_id: Optional[int] = None, temperature: float = 0.0,
                 generator: Optional[torch.Generator] = None, chunk: int = 8192) -> Tensor:
        """Prefills the prompts (as prefill does), then decodes up to max_new_tokens tokens per sequence:
        the most likely one (temperature 0) or one drawn from softmax(logits / temperature) with
        `generator`. Returns [batch, max_new_tokens] token ids; after a sequence's eos_token_id its row
        holds -1. Decoding stops once every sequence has ended (looked at every ENDED_CHECK_TOKENS
        tokens, so that the host does not wait for each step), except in an expert-parallel model,
        where every rank takes the same max_new_tokens steps (each step is a collective)."""
        if max_new_tokens < 1 or temperature < 0:
            raise ValueError(f"[lcattn] generate: max_new_tokens must be >= 1 and temperature >= 0, got "
                             f"{max_new_tokens} and {temperature}")
        logits = self.prefill(input_ids, lengths, chunk)
        out = torch.full((self.batch, max_new_tokens), -1, dtype=torch.long, device=input_ids.device)
        ended = torch.zeros(self.batch, dtype=torch.bool, device=input_ids.device)
        for i in range(max_new_tokens):
            if temperature == 0:
                token = logits.argmax(-1)
            else:
                probs = torch.softmax(logits.float() / temperature, dim=-1)
                token = torch.multinomial(probs, 1, generator=generator)[:, 0]
            out[:, i] = token.masked_fill(ended, -1)
            if eos_token_id is not None:
                ended |= token == eos_token_id
                if not self.collective and (i + 1) % self.ENDED_CHECK_TOKENS == 0 and bool(ended.all()):
                    break
            if i + 1 < max_new_tokens:
                logits = self.step(token)
        return out

    def warm_up_or_capture(self) -> Tensor:
        """Runs the step on a side stream (the first ones warm up, and compile, every kernel and library
        handle); after warmup_steps of them, captures the next step, if the cache has room for it.
        Capture records kernels without running them, so the cache's host lengths, which the captured
        forward advanced, are put back."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            logits = self.forward(self.ids, self.cache)[:, 0].clone()
        torch.cuda.current_stream().wait_stream(side)
        self.steps += 1
        host = list(self.cache.host_lengths)
        if self.steps >= self.warmup_steps and max(host, default=0) < self.cache.max_context:
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    self.logits = self.forward(self.ids, self.cache)[:, 0]
                self.graph = graph
            finally:
                self.cache.host_lengths = host
        return logits
