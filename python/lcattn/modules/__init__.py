"""DeepSeek-V4 model blocks on lcattn ops, weight-compatible with the transformers model."""
from lcattn.modules.cache import DeepseekV4Cache
from lcattn.modules.config import CSA, HCA, SLIDING, DeepseekV4Config
from lcattn.modules.model import DeepseekV4ForCausalLM

__all__ = ["DeepseekV4Config", "DeepseekV4ForCausalLM", "DeepseekV4Cache", "SLIDING", "CSA", "HCA"]
