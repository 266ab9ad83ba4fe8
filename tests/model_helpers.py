"""Logit comparisons shared by the model tests."""


def rel(a, b):
    """Median over tokens of ||a - b|| / ||b|| across the vocabulary."""
    a, b = a.float().flatten(0, -2), b.float().flatten(0, -2)
    return ((a - b).norm(dim=-1) / b.norm(dim=-1)).median().item()


def same_argmax(a, b):
    return (a.argmax(-1) == b.argmax(-1)).float().mean().item()
