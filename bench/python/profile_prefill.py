"""Where a prefill chunk of the demo's model spends its GPU time: the wall time of each chunk of a
prompt (eager, as the demo prefills), tokens/s over the chunks after the first, and the largest
kernels of one chunk.

    python bench/python/profile_prefill.py [--chunk 8192] [--chunks 4] [--experts 32] [--rows 25]
"""
import argparse
import time

import torch

from lcattn.demo import gpu_config, random_model
from lcattn.testing.bench import kernel_profile


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk", type=int, default=8192, help="tokens per prefill call")
    parser.add_argument("--chunks", type=int, default=4, help="chunks of the timed prompt (at least 2)")
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--rows", type=int, default=25, help="kernels listed")
    args = parser.parse_args()
    if args.chunks < 2:
        parser.error("--chunks must be at least 2 (the first one is not counted)")
    torch.manual_seed(0)
    config = gpu_config(args.experts, None)
    model = random_model(config, torch.device("cuda"))
    n = args.chunk * args.chunks
    prompt = torch.randint(0, config.vocab_size, (1, n), device="cuda")

    decoder = model.decoder(1, n + 64, graph=False)
    times = []
    for start in range(0, n, args.chunk):
        torch.cuda.synchronize()
        started = time.perf_counter()
        decoder.prefill(prompt[:, start:start + args.chunk])
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    print(f"prefill chunks of {args.chunk} tokens: " + ", ".join(f"{t * 1e3:.1f}" for t in times) + " ms; "
          f"{args.chunk * (args.chunks - 1) / sum(times[1:]):,.0f} tokens/s over chunks 2-{args.chunks}")

    # The second chunk again on a fresh cache, profiled (one call: each call moves the cache on).
    profiled = model.decoder(1, 2 * args.chunk + 64, graph=False)
    profiled.prefill(prompt[:, :args.chunk])
    total_us, launches, lines = kernel_profile(lambda: profiled.prefill(prompt[:, args.chunk:2 * args.chunk]), 1,
                                               warmup=0)
    print(f"one chunk: {total_us / 1e3:.2f} ms of GPU time in {launches:.0f} kernels and copies")
    print("\n".join(lines[: args.rows]))


if __name__ == "__main__":
    main()
