"""jaxskill: find the skill neurons of Qwen1.5 (and Qwen2.5, Qwen3, Llama, Mistral) language
models in JAX/Flax."""

from jaxskill.model import (DEMO_MODEL, FAMILIES, PRESETS, Architecture, ArchitectureError,
                            CausalLM, CheckpointError, export_hf, greedy_generate, load_model,
                            load_tokenizer, neuron_activations, save_converted)
from jaxskill.results import Run

__version__ = "0.1.0"
__all__ = ["DEMO_MODEL", "FAMILIES", "PRESETS", "Architecture", "ArchitectureError", "CausalLM",
           "CheckpointError", "Run", "export_hf", "greedy_generate", "load_model",
           "load_tokenizer", "neuron_activations", "save_converted"]
