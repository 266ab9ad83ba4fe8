"""The tiny model and the logit comparisons shared by the model tests."""
from lcattn.modules import DeepseekV4Config, DeepseekV4ForCausalLM


def tiny_model(device, **changes):
    config = DeepseekV4Config.tiny()
    for key, value in changes.items():
        setattr(config, key, value)
    return DeepseekV4ForCausalLM(config).init_weights(std=0.05).to(device)


def rel(a, b):
    """Median over tokens of ||a - b|| / ||b|| across the vocabulary."""
    a, b = a.float().flatten(0, -2), b.float().flatten(0, -2)
    return ((a - b).norm(dim=-1) / b.norm(dim=-1)).median().item()


def same_argmax(a, b):
    """Share of tokens where a picks b's top logit, or a logit of b within twice the typical difference
    (median over tokens of the largest) of it: a near-tie that rounding alone may flip. One token far
    off does not widen its own margin."""
    a, b = a.float().flatten(0, -2), b.float().flatten(0, -2)
    slack = 2 * (a - b).abs().amax(-1).median()
    picked = b.gather(-1, a.argmax(-1, keepdim=True))
    return (picked >= b.amax(-1, keepdim=True) - slack).float().mean().item()
