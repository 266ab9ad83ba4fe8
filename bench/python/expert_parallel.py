"""Times one expert-parallel MoE layer (lcattn.parallel) per rank: the whole layer, its all-to-all
exchanges alone and its local experts alone, at T tokens per rank.

    torchrun --nproc-per-node N bench/python/expert_parallel.py [--tokens T] [--reps R] [--model flash|pro|tiny]

NCCL on GPUs (one per rank), gloo on CPUs. Rank 0 prints the medians over R calls (each after a
barrier, so a rank's time includes waiting for the slowest).
"""
import argparse
import os
import time

import torch
import torch.distributed as dist

from lcattn import ops
from lcattn.modules import DeepseekV4Config
from lcattn.modules.model import MoE
from lcattn.parallel import ExpertParallelMoE, shut_down


def median_ms(fn, reps: int, device: torch.device) -> float:
    times = []
    for _ in range(reps):
        dist.barrier()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e3


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, help="tokens per rank (default 8192 on GPU, 256 on CPU)")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--model", choices=["flash", "pro", "tiny"], help="dims (default flash on GPU, tiny on CPU)")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    name = args.model or ("flash" if cuda else "tiny")
    config = {"flash": DeepseekV4Config.flash, "pro": DeepseekV4Config.pro, "tiny": DeepseekV4Config.tiny}[name]()
    config.num_hash_layers = 0
    T = args.tokens or (8192 if cuda else 256)
    torch.manual_seed(0)
    with torch.device(device):
        moe = MoE(config, layer=0)
        for p in moe.parameters():
            p.data.normal_(0.0, 0.02)
    layer = ExpertParallelMoE(moe, None)
    del moe
    torch.manual_seed(1 + rank)
    x = torch.randn(T, config.hidden_size, device=device).bfloat16()
    tokens = torch.zeros(T, dtype=torch.long, device=device)
    weights, experts = layer.route(x, tokens)
    rows = torch.randn(T * config.experts_per_token, config.hidden_size, device=device).bfloat16()
    rows = rows[:rows.shape[0] // world * world]  # equal splits: every rank sends and receives as many
    even = [rows.shape[0] // world] * world
    local_ids = torch.randint(0, layer.local, (rows.shape[0], 1), dtype=torch.int32, device=device)

    whole = median_ms(lambda: layer.routed_experts(x, weights, experts), args.reps, device)
    exchange = median_ms(lambda: layer.exchange(layer.exchange(rows, even, even), even, even), args.reps, device)
    gemm = median_ms(lambda: ops.moe_experts(rows, None, local_ids, layer.experts.gate_up_proj,
                                             layer.experts.down_proj, config.swiglu_limit), args.reps, device)
    if rank == 0:
        print(f"{name} MoE layer, {config.num_experts} experts over {world} ranks ({dist.get_backend()}), "
              f"{T} tokens per rank, k = {config.experts_per_token}, medians of {args.reps}:")
        print(f"  routed experts, whole layer: {whole:8.3f} ms")
        print(f"  all-to-all of the rows, there and back (even splits): {exchange:8.3f} ms")
        print(f"  local experts on {rows.shape[0]} rows: {gemm:8.3f} ms")
    shut_down()


if __name__ == "__main__":
    main()
