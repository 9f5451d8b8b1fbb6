"""Model stage: config, Flax modules, checkpoint conversion, decoding."""

from jaxskill.model.architecture import FAMILIES, PRESETS, ConfigError, ModelConfig
from jaxskill.model.checkpoint import (DEMO_MODEL, CheckpointError, export_hf, load_model,
                                       load_tokenizer, save_converted)
from jaxskill.model.decode import greedy_generate
from jaxskill.model.modules import CausalLM, layer_range, neuron_activations

__all__ = ["DEMO_MODEL", "FAMILIES", "PRESETS", "CausalLM", "CheckpointError", "ConfigError",
           "ModelConfig", "export_hf", "greedy_generate", "layer_range", "load_model",
           "load_tokenizer", "neuron_activations", "save_converted"]
