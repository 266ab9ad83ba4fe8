"""Where one attention layer's decode step spends its GPU time: its kernels per step, the GPU time of
each, and the wall time of the step as CUDA-graph replays, eager or through torch.compile.

    python bench/python/profile_layer.py [--kind csa|hca] [--context 131072] [--batch 1] [--no-compile]
"""
import argparse

import layers  # bench/python/layers.py, beside this script
import torch

from lcattn.testing.bench import graphed, kernel_profile, median_ms


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="csa", choices=["csa", "hca", "sliding"])
    parser.add_argument("--context", type=int, default=131072)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rows", type=int, default=30, help="kernels listed")
    args = parser.parse_args()
    config, layer = layers.attention_layer(args.kind)
    state = layers.filled_state(config, args.batch, args.context, 4)
    x = torch.randn(args.batch, 1, config.hidden_size, device="cuda", dtype=torch.bfloat16)
    step = layers.step_for(args.batch, args.context, 1)
    replay = graphed(layers.decode_step(layer, x, state, step, compiled=args.compile))
    total_us, launches, lines = kernel_profile(replay, args.steps)
    how = "compiled" if args.compile else "eager"
    print(f"{args.kind} layer decode step, batch {args.batch}, context {args.context}, {how}, CUDA graph: "
          f"{total_us:.1f} us of GPU time in {launches:.0f} kernels per step")
    print("\n".join(lines[: args.rows]))
    print(f"wall: {median_ms([replay], args.steps):.3f} ms/step (median of graph replays)")


if __name__ == "__main__":
    main()
