"""Expert parallelism over a torch.distributed process group (NCCL on GPUs, gloo on CPUs).

The routed experts of each MoE layer are split evenly over the ranks (rank r owns experts
[r E / W, (r + 1) E / W)); attention, the shared expert, the router and the caches are
data-parallel: each rank runs its own sequences through a full copy of the other weights. Per MoE
layer a rank routes its tokens, sends each (token, expert) row to the expert's rank
(`all_to_all_single`, row counts exchanged first), runs the rows it receives through its experts
with lcattn's grouped GEMM, sends the outputs back, and sums each token's k outputs with their
routing weights, in the same order and precision as the one-device model.

    group = torch.distributed.new_group()          # or the default group (None)
    model = lcattn.parallel.expert_parallel(model, group)

Every rank must make the same calls (each MoE layer is a collective): the same number of model
calls, so Decoder.prefill with the same prompt width, batch and chunk on every rank (it then makes
one call per chunk of the width, with zero lengths where a rank's prompts are done); a rank with no
tokens for a call passes zero lengths. An error on one rank (a bad input, a full cache) leaves the
others waiting in the next collective until the process group's timeout. A slot routed nowhere
(expert -1 from hash routing of unchecked input) is sent nowhere and adds nothing.
"""
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lcattn import ops
from lcattn.modules.model import MoE


class LocalExperts(nn.Module):
    """This rank's slice of the routed experts: gate_up_proj [E / W, 2I, D], down_proj [E / W, D, I]."""

    def __init__(self, gate_up_proj: Tensor, down_proj: Tensor):
        super().__init__()
        self.gate_up_proj = nn.Parameter(gate_up_proj, requires_grad=False)
        self.down_proj = nn.Parameter(down_proj, requires_grad=False)


class ExpertParallelMoE(MoE):
    """A MoE layer whose routed experts are spread over `group`; routing and the shared expert are
    the MoE's own (module names as in MoE, so the layer's state dict keeps its keys)."""

    graph_capturable = False  # the all-to-all split sizes are read on the host
    collective = True  # every rank must make the same calls (Decoder.prefill keeps calling with zero lengths)

    def __init__(self, moe: MoE, group: Optional[dist.ProcessGroup]):
        nn.Module.__init__(self)
        self.config, self.hashed, self.group = moe.config, moe.hashed, group
        self.world, self.rank = dist.get_world_size(group), dist.get_rank(group)
        if self.rank < 0:
            raise ValueError(f"[lcattn] rank {dist.get_rank()} is not in the process group")
        E = moe.config.num_experts
        if E % self.world:
            raise ValueError(f"[lcattn] {E} experts do not split evenly over {self.world} ranks")
        self.local = E // self.world
        self.first = self.rank * self.local
        self.gate, self.shared_experts = moe.gate, moe.shared_experts
        own = slice(self.first, self.first + self.local)
        self.experts = LocalExperts(moe.experts.gate_up_proj.detach()[own].clone(),
                                    moe.experts.down_proj.detach()[own].clone())

    def take_shard(self, prefix: str, state_dict: dict) -> None:
        """Replaces this layer's full expert tensors in a checkpoint's state dict by this rank's rows."""
        for name in ("gate_up_proj", "down_proj"):
            key = f"{prefix}experts.{name}"
            if key in state_dict and state_dict[key].shape[0] == self.config.num_experts:
                state_dict[key] = state_dict[key][self.first:self.first + self.local]

    def exchange(self, rows: Tensor, send: list, recv: list) -> Tensor:
        out = rows.new_empty((sum(recv),) + tuple(rows.shape[1:]))
        dist.all_to_all_single(out, rows, recv, send, group=self.group)
        return out

    def routed_experts(self, x: Tensor, weights: Tensor, experts: Tensor) -> Tensor:
        T, k = experts.shape
        slots = experts.reshape(-1).long()  # slot t * k + j -> expert
        routed = (slots >= 0) & (slots < self.config.num_experts)
        owner = torch.where(routed, slots // self.local, self.world)  # world: routed nowhere, sorted last
        order = torch.argsort(owner, stable=True)  # slots grouped by the rank that owns their expert
        send_counts = torch.bincount(owner, minlength=self.world + 1)[:self.world]
        recv_counts = torch.empty_like(send_counts)
        dist.all_to_all_single(recv_counts, send_counts, group=self.group)
        send, recv = send_counts.tolist(), recv_counts.tolist()  # the split sizes, on the host
        sent = order[:sum(send)]
        rows = self.exchange(x[sent // k], send, recv)
        local_ids = self.exchange((slots[sent] % self.local).to(torch.int32), send, recv)
        y = ops.moe_experts(rows, None, local_ids[:, None].contiguous(), self.experts.gate_up_proj,
                            self.experts.down_proj, self.config.swiglu_limit)
        back = self.exchange(y, recv, send)  # outputs in `sent` order
        row_of_slot = torch.full_like(order, -1)  # -1: routed nowhere, adds nothing
        row_of_slot[sent] = torch.arange(sent.numel(), device=order.device)
        return ops.moe_unpermute(back, row_of_slot.view(T, k).to(torch.int32), weights)


def expert_parallel(model: nn.Module, group: Optional[dist.ProcessGroup] = None) -> nn.Module:
    """Makes every MoE layer of `model` (a DeepseekV4ForCausalLM) expert-parallel over `group`, in
    place: each rank keeps only its experts' weights. Returns the model."""
    if not dist.is_initialized():
        raise RuntimeError("[lcattn] expert_parallel needs torch.distributed.init_process_group first")
    for layer in model.model.layers:
        if not isinstance(layer.mlp, ExpertParallelMoE):
            layer.mlp = ExpertParallelMoE(layer.mlp, group)
    return model


def shut_down(group: Optional[dist.ProcessGroup] = None) -> None:
    """Destroys the process group once every rank has come this far: gloo aborts a rank whose peer
    tears the group down while an exchange between them is still in flight."""
    dist.barrier(group)
    dist.destroy_process_group(group)
