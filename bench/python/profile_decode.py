"""Where a decode step of the demo's model spends its GPU time: kernels per step, GPU time per step,
the largest kernels, and the wall time of eager, compiled and graph-replayed steps.

    python bench/python/profile_decode.py [--batch 1] [--prompt 4096] [--compile] [--rows 25]
"""
import argparse

import torch

from lcattn.demo import decode_median_ms, gpu_config, random_model
from lcattn.testing.bench import kernel_profile


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=4096, help="prompt tokens per sequence")
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--compile", action="store_true", help="profile the torch.compile'd step")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rows", type=int, default=25, help="kernels listed")
    args = parser.parse_args()
    torch.manual_seed(0)
    cuda = torch.device("cuda")
    config = gpu_config(args.experts, None)
    model = random_model(config, cuda)
    context = args.prompt + 4 * args.steps + 8
    prompt = torch.randint(0, config.vocab_size, (args.batch, args.prompt), device="cuda")

    eager = model.decoder(args.batch, context, graph=False, compile=args.compile)
    token = [eager.prefill(prompt).argmax(-1)]

    def step():
        token[0] = eager.step(token[0]).argmax(-1)
    total_us, launches, lines = kernel_profile(step, args.steps)  # 3 warm-up steps (and the compile)
    how = "compiled" if args.compile else "eager"
    print(f"decode step, batch {args.batch}, {args.prompt}-token prompts, {how}: {total_us / 1e3:.3f} ms of GPU "
          f"time in {launches:.0f} kernels and copies per step")
    print("\n".join(lines[: args.rows]))
    print(f"wall, {how}: {decode_median_ms(eager, token[0], args.steps, cuda):.2f} ms/step")

    graphed = model.decoder(args.batch, context, graph=True, compile=args.compile)
    token = graphed.prefill(prompt).argmax(-1)
    print(f"wall, {how} CUDA graph replays: {decode_median_ms(graphed, token, args.steps, cuda):.2f} ms/step")


if __name__ == "__main__":
    main()
