"""Block KV compression of a prefill (CSA and HCA) against the unfused reference."""
import torch

from cases import BF, DEV
from lcattn import ops, reference
from lcattn.modules.rope import plain_inv_freq


def compress_cases(quick):
    T = 16384 if quick else 131072
    for name, ratio, overlap in (("csa", 4, True), ("hca", 128, False)):
        width = (2 if overlap else 1) * 512
        def inputs(ratio=ratio, overlap=overlap, width=width):
            kv, score = torch.randn(1, T, width, device=DEV), torch.randn(1, T, width, device=DEV)
            ape, w = torch.randn(ratio, width, device=DEV), torch.ones(512, device=DEV)
            inv_freq = plain_inv_freq(160000.0, 64, DEV)
            return kv, score, ape, w, inv_freq
        def ours(ratio=ratio, overlap=overlap, width=width):
            kv, score, ape, w, f = inputs(ratio, overlap, width)
            rk, rs = ops.compress_state(1, ratio, width, overlap, DEV)
            out = torch.empty(1, T // ratio, 512, device=DEV, dtype=BF)
            lens = torch.tensor([T], dtype=torch.int32, device=DEV)
            start = torch.zeros(1, dtype=torch.int32, device=DEV)
            return lambda: ops.compress_kv(kv, score, lens, start, rk, rs, ape, w, f, out, ratio, overlap)
        def base(ratio=ratio, overlap=overlap, width=width):
            a = inputs(ratio, overlap, width)
            return lambda: reference.compress_kv(*a, ratio, overlap)
        nbytes = 2 * T * width * 4 + T // ratio * 512 * 2
        yield "compress_kv", f"{name} prefill T={T}", 0, nbytes, ours, {"unfused torch": base}
