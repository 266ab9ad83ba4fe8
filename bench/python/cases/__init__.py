"""The benchmark driver's cases, one module per op family (attention, indexer, moe, compress).

A family is a function of `quick` that yields (op, case, flops, bytes, make_ours, {baseline: make},
[context]): each make builds its inputs on the GPU and returns the call to time; context is the
context length the case stands for, where it has one (the driver plots those against it).
"""
import torch

from lcattn.testing.bench import graphed

DEV = "cuda"
BF = torch.bfloat16
GRAPHS = True  # decode cases as CUDA-graph replays; profile_case.py turns it off to list their kernels


def replayed(fn):
    """fn as a replay of its CUDA graph (decode's launch path), or fn itself when GRAPHS is off."""
    return graphed(fn) if GRAPHS else fn
