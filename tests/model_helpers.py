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
    return (a.argmax(-1) == b.argmax(-1)).float().mean().item()
