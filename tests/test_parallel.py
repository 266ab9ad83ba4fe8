"""Expert parallelism (lcattn.parallel) on CPU processes over gloo: the same logits as one process."""
import os
import sys
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from model_helpers import rel, same_argmax, write_published_checkpoint

from lcattn.modules import DeepseekV4Config, DeepseekV4ForCausalLM
from lcattn.parallel import ExpertParallelMoE, expert_parallel, shut_down
from lcattn.testing import assert_close


def run_calls(model, ids, lengths):
    """Prefill in two chunks (sequences of different lengths), then three decode steps: logits of each call."""
    cache = model.new_cache(ids.shape[0])
    out = [model(ids[:, :7], cache, lengths=[min(n, 7) for n in lengths]),
           model(ids[:, 7:lengths[0]], cache, lengths=[max(n - 7, 0) for n in lengths])]
    for t in range(3):
        out.append(model(ids[:, lengths[0] + t:lengths[0] + t + 1], cache))
    return out


def leave() -> None:
    """Ends a worker that passed without the interpreter's teardown. There, in about 1 run in 40 of
    the 2-rank test, a rank aborted after its process group was destroyed ("terminate called without
    an active exception", no Python frame left), which mp.spawn reports as a failure; gloo's
    exchanges, barrier and teardown alone, with or without lcattn imported, did not (0 in 80 each)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def worker(rank: int, world: int, store: str, backend: str = "gloo") -> None:
    # A rank left waiting in a collective fails the test in a minute rather than gloo's 30.
    dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        torch.manual_seed(0)  # the same weights on every rank
        model = DeepseekV4ForCausalLM(DeepseekV4Config.tiny()).init_weights(std=0.05).to(device)
        checkpoint = model.hf_state_dict()
        torch.manual_seed(1 + rank)  # each rank its own sequences, of its own lengths
        lengths = [9 + 5 * rank, 7 + rank]
        ids = torch.randint(0, model.config.vocab_size, (2, lengths[0] + 3)).to(device)
        single = run_calls(model, ids, lengths)
        # Prompts of one width on every rank, of different lengths: rank 0's end in the third chunk of 8,
        # the others' in the first, after which they keep calling with zero lengths.
        prompt = torch.randint(0, model.config.vocab_size, (1, 20)).to(device)
        prompt_lengths = [20 if rank == 0 else 5]
        single_prefill = model.decoder(1, 64, graph=False).prefill(prompt, prompt_lengths, chunk=8)
        # generate: rank 0's sequence ends at its first token, the others' run all 6 steps; every rank
        # takes all 6 (each a collective), else the others would wait in an all-to-all.
        first = int(model.decoder(1, 64, graph=False).prefill(prompt, prompt_lengths, chunk=8).argmax())
        eos = first if rank == 0 else None
        single_generate = model.decoder(1, 64, graph=False).generate(prompt, prompt_lengths, 6, eos, chunk=8)

        expert_parallel(model)
        local = model.config.num_experts // world
        for layer in model.model.layers:
            assert isinstance(layer.mlp, ExpertParallelMoE) and layer.mlp.experts.gate_up_proj.shape[0] == local
        parallel = run_calls(model, ids, lengths)
        assert not model.decoder(2, 32).use_graph  # host-side split sizes: no CUDA graph by default
        with pytest.raises(ValueError, match=r"\[lcattn\] an expert-parallel model"):
            model.decoder(2, 32, graph=True)
        for want, got in zip(single, parallel):
            if device.type == "cpu":  # the same arithmetic in the same order
                assert torch.equal(got, want), (rank, (got - want).abs().max().item())
            else:  # the GEMM's tile follows the rows per expert, which differ between the runs
                assert rel(got, want) < 1e-2 and same_argmax(got, want) > 0.9, rank

        got = model.decoder(1, 64, graph=False).prefill(prompt, prompt_lengths, chunk=8)
        assert rel(got, single_prefill) < 1e-2 if device.type == "cuda" else torch.equal(got, single_prefill)
        got = model.decoder(1, 64).generate(prompt, prompt_lengths, 6, eos, chunk=8)
        assert torch.equal(got, single_generate) or device.type == "cuda", (rank, got, single_generate)
        assert (got[0, 1:] == -1).all() if rank == 0 else (got >= 0).all()

        # A transformers-format checkpoint loads into the sharded model as this rank's experts, also into
        # one built on the meta device, sharded, then given memory: no rank holds every expert.
        model.load_hf_state_dict(checkpoint)
        reloaded = run_calls(model, ids, lengths)
        assert all(torch.equal(a, b) for a, b in zip(reloaded, parallel))
        with torch.device("meta"):
            lazy = expert_parallel(DeepseekV4ForCausalLM(DeepseekV4Config.tiny()))
        lazy.to_empty(device=device).load_hf_state_dict(checkpoint)
        assert all(torch.equal(a, b) for a, b in zip(run_calls(lazy, ids, lengths), parallel))
        # The same weights in the published form (unquantized), read file by file: this rank's experts only.
        folder = f"{store}.published{rank}"
        write_published_checkpoint({k: v.cpu() for k, v in checkpoint.items()}, folder, quantize=False)
        for tensor in lazy.state_dict().values():
            tensor.zero_()
        lazy.load_checkpoint(folder, log=None)
        assert all(torch.equal(a, b) for a, b in zip(run_calls(lazy, ids, lengths), parallel))

        # Slots routed nowhere (expert -1, as hash routing gives for unchecked input) add nothing.
        moe, E = model.model.layers[0].mlp, model.config.num_experts
        x = torch.randn(5, model.config.hidden_size, device=device).bfloat16()
        experts = torch.randint(0, E, (5, 2), dtype=torch.int32, device=device)
        experts[rank % 5, 1] = -1
        weights = torch.rand(5, 2, device=device)
        os.environ["LCATTN_CHECK_VALUES"] = "0"
        got = moe.routed_experts(x, weights, experts)
        del os.environ["LCATTN_CHECK_VALUES"]
        none = experts < 0
        want = moe.routed_experts(x, weights.masked_fill(none, 0), experts.masked_fill(none, 0))
        assert_close(got.float(), want.float(), 1e-2)
        shut_down()
    finally:
        if dist.is_initialized():  # a failed rank: no barrier, which the others might never reach
            dist.destroy_process_group()
    leave()


@pytest.mark.parametrize("world", [2, 4])
def test_expert_parallel_matches_one_process(world, tmp_path):
    mp.spawn(worker, args=(world, str(tmp_path / "store")), nprocs=world)  # gloo's rendezvous file


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_expert_parallel_over_nccl_cuda(tmp_path):
    mp.spawn(worker, args=(2, str(tmp_path / "store"), "nccl"), nprocs=2)  # 8 experts: 2 ranks of 4


def outsider(rank: int, store: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    try:
        group = dist.new_group([0])
        if rank == 1:
            with pytest.raises(ValueError, match=r"\[lcattn\] rank 1 is not in the process group"):
                expert_parallel(DeepseekV4ForCausalLM(DeepseekV4Config.tiny()), group)
    finally:
        dist.destroy_process_group()
    leave()


def test_a_rank_outside_the_group_is_an_error(tmp_path):
    mp.spawn(outsider, args=(str(tmp_path / "store"),), nprocs=2)


def test_expert_parallel_needs_a_process_group():
    model = DeepseekV4ForCausalLM(DeepseekV4Config.tiny())
    with pytest.raises(RuntimeError, match=r"\[lcattn\] expert_parallel needs torch.distributed"):
        expert_parallel(model)
