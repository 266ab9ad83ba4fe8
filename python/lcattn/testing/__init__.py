"""Comparison helpers and shape lists shared by the tests and benchmarks."""
import torch
from torch import Tensor

from lcattn.modules.config import DeepseekV4Config


def _op_shapes(config: DeepseekV4Config) -> dict:
    """The dimensions the ops see in a model preset (SPEC 1)."""
    return dict(hidden=config.hidden_size, heads=config.num_heads, head_dim=config.head_dim,
                rope_dim=config.rope_dim, window=config.window, index_heads=config.index_heads,
                index_dim=config.index_dim, index_topk=config.index_topk, experts=config.num_experts,
                experts_per_token=config.experts_per_token, expert_dim=config.expert_dim,
                route_scale=config.route_scale)


MODEL_SHAPES = {"flash": _op_shapes(DeepseekV4Config.flash()), "pro": _op_shapes(DeepseekV4Config.pro())}


def rel_err(out: Tensor, ref: Tensor) -> float:
    """||out - ref|| / ||ref|| over the finite positions of ref, in fp64."""
    o, r = out.double().cpu(), ref.double().cpu()
    finite = torch.isfinite(r)
    denom = r[finite].norm().item()
    return (o[finite] - r[finite]).norm().item() / max(denom, 1e-30)


def assert_close(out: Tensor, ref: Tensor, tol: float, what: str = "output") -> None:
    """Same shape, NaN and inf at the same places, relative error at most tol."""
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    o, r = out.double().cpu(), ref.double().cpu()
    assert torch.equal(torch.isnan(o), torch.isnan(r)), f"{what}: NaN positions differ"
    assert torch.equal(torch.isinf(o), torch.isinf(r)), f"{what}: inf positions differ"
    inf = torch.isinf(r)
    assert torch.equal(o[inf], r[inf]), f"{what}: inf signs differ"
    err = rel_err(o, r)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"


def assert_within_bf16_error(out: Tensor, ref: Tensor, bf16: Tensor, factor: float = 2.0,
                              what: str = "output") -> None:
    """A fast kernel judged by the error of the same computation in bf16 PyTorch: max |out - ref| at most
    factor * max |bf16 - ref| plus 1% of a bf16 ulp at ref's largest magnitude (ref in fp32). Stricter than
    a fixed relative tolerance where bf16 rounding is the whole error."""
    o, r, b = out.double().cpu(), ref.double().cpu(), bf16.double().cpu()
    finite = torch.isfinite(r)
    err, base = (o - r)[finite].abs().max().item(), (b - r)[finite].abs().max().item()
    floor = 0.01 * 2.0 ** -8 * r[finite].abs().max().item()
    assert err <= factor * base + floor, f"{what}: max error {err:.3e} > {factor} x {base:.3e} of bf16 torch"


def check_topk(indices: Tensor, scores: Tensor, k: int, tol: float = 0.0) -> None:
    """SPEC 4's contract: per row, min(k, candidates) unique in-range candidates first, -1 after,
    and min(selected score) >= max(unselected candidate score) - tol. Candidates: not -inf, not NaN.
    tol > 0 where the picks were made on scores that differ from `scores` by rounding (at most tol / 2):
    entries that close to the k-th may swap."""
    idx, s = indices.cpu().long(), scores.cpu().float()
    assert idx.shape == (*s.shape[:-1], k)
    N = s.shape[-1]
    idx, s = idx.reshape(-1, k), s.reshape(-1, N)
    cand = ~(torch.isnan(s) | (s == float("-inf")))
    for r in range(idx.shape[0]):
        n_sel = min(k, int(cand[r].sum()))
        sel, pad = idx[r, :n_sel], idx[r, n_sel:]
        assert bool((pad == -1).all()), f"row {r}: expected {k - n_sel} trailing -1, got {idx[r].tolist()}"
        assert bool(((sel >= 0) & (sel < N)).all()), f"row {r}: index out of range"
        assert sel.unique().numel() == n_sel, f"row {r}: repeated index"
        assert bool(cand[r, sel].all()), f"row {r}: picked a -inf or NaN entry"
        rest = cand[r].clone()
        rest[sel] = False
        if n_sel and bool(rest.any()):
            worst, best_left = s[r, sel].min().item(), s[r][rest].max().item()
            assert worst >= best_left - tol, f"row {r}: a better entry was left out ({best_left} > {worst})"
