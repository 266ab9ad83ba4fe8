"""The main job: a DeepSeek-V4 model with random weights prefills a long prompt, then decodes; then
a batch of shorter sequences decodes together.

    python -m lcattn.demo [--context N] [--decode N] [--chunk N] [--batch N] [--batch-prompt N]
                          [--eager] [--[no-]compile] [--device cpu|cuda]
    torchrun --nproc-per-node N -m lcattn.demo --expert-parallel [...]

On a GPU the model has V4-Flash's attention dimensions (64 heads of 512, indexer 64 x 128, top-k
512, window 128) with a window-only, two CSA and two HCA layers, and 128K positions (prompt and
decoded tokens); on a CPU it is the tiny configuration with 16K positions. Prints prefill tokens/s,
decode ms per token, peak memory, and the cache's bytes per token beside a dense-attention cache of
the same model. Decoding runs through model.decoder: a cache of fixed capacity and, on a GPU, one
captured CUDA graph per batch size replayed each step (--eager: no graph), and the step through
torch.compile (the default on a GPU; --no-compile skips it, --compile asks for it on a CPU). With
--expert-parallel (under torchrun) the routed experts are split over the ranks (lcattn.parallel; NCCL
on GPUs, gloo on CPUs), each rank runs its own prompts, and rank 0 prints its figures (no graph, no
compile: the exchange reads its split sizes on the host).
"""
import argparse
import os
import resource
import time
from dataclasses import replace

import torch

import lcattn
import lcattn.parallel
from lcattn.modules import CSA, HCA, SLIDING, DeepseekV4Config, DeepseekV4ForCausalLM
from lcattn.testing.bench import Progress


def gpu_config(experts: int, layers) -> DeepseekV4Config:
    # all 256 experts of 5 layers would need 64 GB of weights alone
    return replace(DeepseekV4Config.flash(), num_experts=experts).with_layers(layers or [SLIDING, CSA, HCA, CSA, HCA])


def random_model(config: DeepseekV4Config, device: torch.device) -> DeepseekV4ForCausalLM:
    """The demo's model with random weights: bf16 on the GPU (the norms, sinks and mHC weights stay
    fp32), fp32 on the CPU."""
    torch.set_default_dtype(torch.bfloat16 if device.type == "cuda" else torch.float32)
    with torch.device(device):
        model = DeepseekV4ForCausalLM(config).init_weights()
    torch.set_default_dtype(torch.float32)
    return model


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (GPU, allocated)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process RSS)"


def entry_bytes(cache, stream: str) -> str:
    """Bytes of one entry of a layer cache's `stream` ("ckv" or "index_keys"), "-" if no layer has one."""
    sizes = [getattr(layer, stream).entry_bytes() for layer in cache.layers if getattr(layer, stream) is not None]
    return f"{sizes[0]:,}" if sizes else "-"


def decode_median_ms(decoder, token: torch.Tensor, steps: int, device: torch.device) -> float:
    """Median ms of `steps` greedy decode steps (the first one, which captures the graph, included)."""
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        token = decoder.step(token).argmax(-1)
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e3 if times else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    on_gpu = torch.cuda.is_available() and lcattn.cuda_kernels_built()
    parser.add_argument("--device", default="cuda" if on_gpu else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--context", type=int, help="positions: the prompt and the decoded tokens "
                        "(default 131072 on GPU, 16384 on CPU; at most 1048576)")
    parser.add_argument("--decode", type=int, default=32, help="tokens to decode after the prompt")
    parser.add_argument("--chunk", type=int, default=8192, help="prefill chunk (bounds activation memory)")
    parser.add_argument("--experts", type=int, default=32, help="routed experts per layer on the GPU")
    parser.add_argument("--layers", help="layer kinds, e.g. sliding,csa,hca,csa (default sliding,csa,hca,csa,hca "
                        "on GPU, the tiny model's sliding,csa,hca,csa on CPU)")
    parser.add_argument("--batch", type=int, default=64, help="sequences of the batched decode (0: skip it)")
    parser.add_argument("--batch-prompt", type=int, help="prompt tokens per sequence of the batched decode "
                        "(default 2048 on GPU, 128 on CPU)")
    parser.add_argument("--eager", action="store_true", help="decode steps without the CUDA graph (GPU)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction,
                        help="decode steps through torch.compile (default: on a GPU)")
    parser.add_argument("--expert-parallel", action="store_true", help="under torchrun: split the routed experts "
                        "over the ranks, each rank decoding its own sequences")
    parser.add_argument("--index-fp8", action="store_true", help="the indexer in fp8: e4m3 keys with a scale per "
                        "entry in the cache, e4m3 queries (config.index_fp8)")
    parser.add_argument("--kv-fp8", action="store_true", help="the compressed attention entries cached in the "
                        "kv_fp8 form, the bytes of FlashMLA's V4 fp8 entries (config.kv_fp8)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name in ("chunk", "experts", "context", "batch_prompt"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("decode", "batch"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be at least 0, got {getattr(args, name)}")
    device = torch.device(args.device)
    rank = 0
    if args.expert_parallel:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank = torch.distributed.get_rank()
    say = print if rank == 0 else (lambda *a, **k: None)
    layers = args.layers.split(",") if args.layers else None
    if layers and not set(layers) <= {SLIDING, CSA, HCA}:
        parser.error(f"--layers takes {SLIDING}, {CSA} and {HCA}, got {args.layers}")
    config = gpu_config(args.experts, layers) if device.type == "cuda" else DeepseekV4Config.tiny()
    if layers and device.type != "cuda":
        config = config.with_layers(layers)
    config.index_fp8, config.kv_fp8 = args.index_fp8, args.kv_fp8
    context = args.context or (131072 if device.type == "cuda" else 16384)
    if not args.decode < context <= config.max_positions:
        parser.error(f"--context must exceed --decode and be at most {config.max_positions}")
    prompt_len = context - args.decode
    torch.manual_seed(args.seed)

    model = random_model(config, device)
    params = sum(p.numel() for p in model.parameters())
    if args.expert_parallel:
        lcattn.parallel.expert_parallel(model)
        world = torch.distributed.get_world_size()
        say(f"expert parallel over {world} ranks ({torch.distributed.get_backend()}): "
            f"{config.num_experts // world} routed experts per rank; the figures below are rank 0's")
    torch.manual_seed(args.seed + 1 + rank)  # each rank its own prompts
    say(f"lcattn demo on {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}: "
          f"{config.num_layers} layers {config.layer_types}, hidden {config.hidden_size}, {config.num_heads} heads x "
          f"{config.head_dim}, {config.num_experts} experts, {params / 1e6:,.0f} M parameters, random weights",
          flush=True)

    prompt = torch.randint(0, config.vocab_size, (1, prompt_len), device=device)
    # An expert-parallel step is not compiled by default: its exchange reads the split sizes on the
    # host (--compile asks for it).
    use_compile = device.type == "cuda" and not args.expert_parallel if args.compile is None else args.compile
    graph = False if args.eager else None  # None: on CUDA for a capturable model, unless LCATTN_DECODE_GRAPH=0
    decoder = model.decoder(1, context, graph=graph, compile=use_compile)
    synchronize(device)
    started = time.perf_counter()
    bar = Progress("prefill", prompt_len) if rank == 0 else None
    for start in range(0, prompt_len, args.chunk):
        logits = decoder.prefill(prompt[:, start:start + args.chunk])
        synchronize(device)
        if bar:
            bar.update(min(start + args.chunk, prompt_len))
    prefill_s = time.perf_counter() - started
    decode_ms = decode_median_ms(decoder, logits.argmax(-1), args.decode, device)
    cache = decoder.cache
    graphed = ("CUDA graph replays" if decoder.use_graph else "eager") + (", compiled" if use_compile else "")
    tokens = cache.host_lengths[0]
    dense = config.num_layers * config.head_dim * 2  # one bf16 K=V row of head_dim per layer and token
    ours = cache.nbytes() / tokens
    say(f"prompt {prompt_len} tokens, then {args.decode} decoded; chunks of {args.chunk}")
    say(f"prefill:        {prompt_len / prefill_s:,.0f} tokens/s ({prefill_s:.2f} s)")
    say(f"decode:         {decode_ms:.2f} ms/token (median, batch 1, {graphed})")
    say(f"peak memory:    {peak_memory(device)}")
    say(f"cache:          {ours:,.1f} bytes/token ({cache.nbytes() / 2**20:,.1f} MiB at {tokens} tokens); "
          f"a dense-attention cache: {dense:,} bytes/token ({dense * tokens / 2**20:,.1f} MiB), "
          + (f"{dense / ours:.1f}x more" if dense >= ours else f"{ours / dense:.1f}x smaller"))
    say(f"cache entries:  attention {entry_bytes(cache, 'ckv')} bytes, indexer {entry_bytes(cache, 'index_keys')} "
        f"bytes ({'kv_fp8' if config.kv_fp8 else 'bf16'} attention entries, "
        f"{'e4m3' if config.index_fp8 else 'bf16'} indexer keys)")
    if args.batch > 0:
        B, n = args.batch, args.batch_prompt or (2048 if device.type == "cuda" else 128)
        batched = model.decoder(B, n + args.decode, graph=graph, compile=use_compile)
        started = time.perf_counter()
        logits = batched.prefill(torch.randint(0, config.vocab_size, (B, n), device=device), chunk=args.chunk)
        synchronize(device)
        prefill_s = time.perf_counter() - started
        ms = decode_median_ms(batched, logits.argmax(-1), args.decode, device)
        say(f"{f'batch {B}:':<16}{n}-token prompts prefilled at {B * n / prefill_s:,.0f} tokens/s; decode "
              f"{ms:.2f} ms/step, {B * 1e3 / ms:,.0f} tokens/s (median, {graphed})")

    if args.expert_parallel:
        lcattn.parallel.shut_down()


if __name__ == "__main__":
    main()
