"""Model stage: config, Flax modules, checkpoint conversion, decoding."""

from jaxskill.model.checkpoint import (CheckpointError, export_hf, load_model, load_tokenizer,
                                       save_converted)
from jaxskill.model.config import PRESETS, ConfigError, QwenConfig
from jaxskill.model.decode import greedy_generate
from jaxskill.model.modules import Qwen2LM, neuron_activations
