"""The mHC ops of a site (hc_post: the new residual streams; hc_collapse: the sublayer input) against
the same formulas on stock torch ops (the model's path before them)."""
import torch

from cases import BF, DEV, replayed
from lcattn import ops


def torch_hc_post(streams, out, post, comb, pre):
    dtype = streams.dtype
    return post.to(dtype).unsqueeze(-1) * out.unsqueeze(-2) + torch.matmul(comb.to(dtype).transpose(-1, -2), streams)


def torch_hc_collapse(streams, out, post, comb, pre):
    return (pre.unsqueeze(-1) * streams).sum(dim=2).to(streams.dtype)


def lcattn_hc_post(streams, out, post, comb, pre):
    return ops.hc_post(streams, out, post, comb)


def lcattn_hc_collapse(streams, out, post, comb, pre):
    return ops.hc_collapse(streams, pre)


def mhc_cases(quick):
    n, D = 4, 4096  # V4-Flash: 4 streams of the hidden size
    for T in (1, 8192) if quick else (1, 64, 8192):
        def inputs(T=T):
            streams, out = torch.randn(T, n, D, device=DEV, dtype=BF), torch.randn(T, D, device=DEV, dtype=BF)
            post = 2 * torch.sigmoid(torch.randn(T, n, device=DEV))
            comb = ops.hc_sinkhorn(torch.randn(T, n, n, device=DEV), 20)
            return streams, out, post, comb, torch.sigmoid(torch.randn(T, n, device=DEV))
        def make(fn, T=T):
            args = inputs(T)
            call = lambda: fn(*args)  # noqa: E731
            return replayed(call) if T <= 64 else call  # decode sizes as graph replays
        graph = " (graph)" if T <= 64 else ""
        case = f"T={T} n={n} D={D}{graph}"
        yield ("hc_post", case, 2 * T * n * (n + 1) * D, 2 * T * (2 * n + 1) * D,
               lambda T=T: make(lcattn_hc_post, T), {"stock torch": lambda T=T: make(torch_hc_post, T)})
        yield ("hc_collapse", case, 2 * T * n * D, 2 * T * (n + 1) * D,
               lambda T=T: make(lcattn_hc_collapse, T), {"stock torch": lambda T=T: make(torch_hc_collapse, T)})
