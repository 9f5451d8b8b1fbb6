"""The frozen language model and what is applied to its inputs: the architecture, the Flax
modules, checkpoint conversion, decoding; the typed batch, the soft prompt, the prompted forward,
capture and interventions."""

from jaxskill.model.architecture import FAMILIES, PRESETS, Architecture, ArchitectureError
from jaxskill.model.checkpoint import (DEMO_MODEL, CheckpointError, export_hf, load_model,
                                       load_tokenizer, save_converted)
from jaxskill.model.decode import greedy_generate
from jaxskill.model.modules import CausalLM, layer_range, neuron_activations

__all__ = ["DEMO_MODEL", "FAMILIES", "PRESETS", "Architecture", "ArchitectureError", "CausalLM",
           "CheckpointError", "export_hf", "greedy_generate", "layer_range", "load_model",
           "load_tokenizer", "neuron_activations", "save_converted"]
