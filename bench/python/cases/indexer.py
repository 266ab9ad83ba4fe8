"""The Lightning Indexer's scoring with top-k, its scoring alone, and top-k alone, against unfused torch
and torch.topk."""
import torch

from cases import BF, DEV
from lcattn import ops


def indexer_cases(quick):
    # A prefill chunk of S queries of a CSA layer at a context of 4 * N tokens.
    for S, N in ((4096, 32768),) if quick else ((1024, 32768), (4096, 8192), (4096, 32768), (4096, 131072),
                                                 (4096, 262144)):
        def make(S=S, N=N):
            q = torch.randn(1, S, 64, 128, device=DEV, dtype=BF)
            w = torch.randn(1, S, 64, device=DEV) * 0.01
            keys = torch.randn(1, N, 128, device=DEV, dtype=BF)
            qs = torch.tensor([4 * N - S], dtype=torch.int32, device=DEV)
            return q, w, keys, qs
        def ours(S=S, N=N):
            a = make(S, N)
            return lambda: ops.indexer_topk(*a, 512)
        def scores(S=S, N=N):
            a = make(S, N)
            return lambda: ops.indexer_scores(*a)
        def unfused_scores(q, w, keys):
            return torch.einsum("bshd,bnd->bshn", q, keys).relu_().float().mul_(w[..., None]).sum(2)
        def unfused(S=S, N=N):
            q, w, keys, qs = make(S, N)
            return lambda: torch.topk(unfused_scores(q, w, keys), 512, dim=-1)
        def unfused_alone(S=S, N=N):
            q, w, keys, qs = make(S, N)
            return lambda: unfused_scores(q, w, keys)
        flops = 2 * 64 * 128 * N * S
        in_bytes = 2 * (S * 64 * 128 + N * 128)
        # The unfused path holds S * 64 * N fp32 scores: 34 GB at N = 32768.
        baselines = {"unfused torch": unfused} if N <= 32768 else {}
        yield "indexer_topk", f"S={S} entries={N} k=512", flops, in_bytes, ours, baselines, 4 * N
        if N <= 131072:  # the [S, N] fp32 scores: 2 GB at N = 131072
            alone = {"unfused torch": unfused_alone} if N <= 32768 else {}
            yield "indexer_scores", f"S={S} entries={N}", flops, in_bytes + 4 * S * N, scores, alone, 4 * N
        if S == 4096 and N in (32768, 131072):
            yield from fp8_scores_case(S, N, make, scores, flops)


def fp8_scores_case(S, N, make, bf16_scores, flops):
    """indexer_scores in the fp8 form (e4m3 q and keys, key_scales) against the bf16 op on the same
    shape (e4m3 products; with LCATTN_INDEXER_FP8=0 the op widens to bf16 first)."""
    def fp8(S=S, N=N):
        q, w, keys, qs = make(S, N)
        q8, q_scales = ops.quantize_e4m3(q)
        k8, key_scales = ops.quantize_e4m3(keys)
        w = w * q_scales
        return lambda: ops.indexer_scores(q8, w, k8, qs, key_scales=key_scales)
    in_bytes = S * 64 * 128 + N * 132 + 4 * S * 64
    yield ("indexer_scores", f"S={S} entries={N} fp8", flops, in_bytes + 4 * S * N, fp8,
           {"bf16 indexer_scores": bf16_scores}, 0)


def topk_cases(quick):
    for R, N in ((64, 262144), (4096, 32768)) if quick else ((1, 262144), (16, 262144), (64, 262144), (4096, 8192),
                                                              (4096, 32768), (4096, 131072), (4096, 262144)):
        def make(R=R, N=N):
            s = torch.randn(R, N, device=DEV)
            return lambda: ops.topk_indices(s, 512)
        def base(R=R, N=N):
            s = torch.randn(R, N, device=DEV)
            return lambda: torch.topk(s, 512, dim=-1)
        # Rows of a 4096-query prefill chunk form the context curve; 1, 16 and 64 rows are decode batches.
        yield ("topk_indices", f"rows={R} N={N} k=512", 0, 4 * R * N, make, {"torch.topk": base},
               4 * N if R == 4096 else 0)
