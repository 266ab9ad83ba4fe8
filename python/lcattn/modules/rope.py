"""RoPE frequency tables (SPEC 1): plain for window-only layers, YaRN for compressed layers."""
import math

import torch

from lcattn.modules.config import SLIDING, DeepseekV4Config


def plain_inv_freq(base: float, dim: int, device=None) -> torch.Tensor:
    """[dim / 2] fp32 inverse frequencies base^(-2k / dim) of plain RoPE (SPEC 1)."""
    return 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float, device=device) / dim)


def layer_inv_freq(config: DeepseekV4Config, layer_type: str) -> torch.Tensor:
    """[rope_dim / 2] fp32 inverse frequencies of a layer kind (YaRN: frequencies only)."""
    dim = config.rope_dim
    if layer_type == SLIDING:
        return plain_inv_freq(config.rope_theta, dim)
    base = config.compress_rope_theta
    plain = plain_inv_freq(base, dim)
    if not config.yarn_factor:
        return plain

    def correction_dim(rotations: float) -> float:
        return dim * math.log(config.yarn_original_positions / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(config.yarn_beta_fast)), 0)
    high = min(math.ceil(correction_dim(config.yarn_beta_slow)), dim - 1)
    ramp = ((torch.arange(dim // 2, dtype=torch.float) - low) / max(high - low, 1e-3)).clamp(0, 1)
    keep = 1 - ramp  # 1: extrapolate (high frequencies), 0: interpolate by the factor
    return plain / config.yarn_factor * (1 - keep) + plain * keep


def apply_rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
    """Rotates the interleaved pairs of the last 2 * len(inv_freq) channels of x [B, S, ..., D] at
    positions [B, S] in place (x is a projection's fresh output: only the RoPE channels are written),
    in fp32, and returns x. sign -1 undoes the rotation."""
    rd = 2 * inv_freq.numel()
    angle = positions.float().view(*positions.shape, *([1] * (x.dim() - 3)), 1) * inv_freq
    cos, sin = angle.cos(), sign * angle.sin()
    even, odd = x[..., -rd::2].float(), x[..., -rd + 1::2].float()
    x[..., -rd:] = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)
    return x
