"""Helper for tests/test_sharding.py, run in a subprocess with 8 fake CPU devices and float64
enabled: for a tiny random checkpoint of each family other than Qwen2 (Qwen3 with its q/k norms
and attention biases, Llama with llama3 RoPE scaling and biases, Mistral with a sliding window
shorter than the input), the logits and captured activations with left padding on one device
and on a (2 data x 4 model) mesh in the tensor and fsdp layouts; and the params read straight
into the tensor layout from the HF files. Writes the largest absolute differences to JSON.

  python tests/sharded_families.py OUT.json
"""

import json
import sys
import tempfile
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import jaxskill  # noqa: E402
from jaxskill.runtime import sharding  # noqa: E402
from sharded_x64 import forward  # noqa: E402
from tests.conftest import make_hf_model  # noqa: E402

# 8 query / 4 key-value heads and 80 neurons: the model axis of 4 divides heads and neurons.
FAMILIES = {
    "qwen3": dict(family="qwen3", head_dim=8, attention_bias=True),
    "llama": dict(family="llama", theta=100.0, attention_bias=True, tied=True,
                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8}),
    "mistral": dict(family="mistral", sliding_window=5, theta=1e4),
}


def main(dst):
  assert jax.device_count() == 8, jax.devices()
  ids = np.random.default_rng(0).integers(0, 97, size=(8, 16))
  mask = np.ones_like(ids)
  mask[::2, :6] = 0  # left padding on half the rows
  out = {}
  for name, kwargs in FAMILIES.items():
    path = Path(tempfile.mkdtemp()) / name
    make_hf_model(hidden=64, heads=8, kv_heads=4, **kwargs).save_pretrained(path)
    model, params = jaxskill.load_model(path, dtype=jnp.float64)
    assert model.config.model_type == kwargs["family"]
    want_logits, want_acts = forward(model, params, ids, sharding.make_mesh(1, 1), "tensor",
                                     mask)
    for layout in ("tensor", "fsdp"):
      logits, acts = forward(model, params, ids, sharding.make_mesh(2, 4), layout, mask)
      out[f"{name}_{layout}_logits"] = float(np.abs(logits - want_logits).max())
      out[f"{name}_{layout}_acts"] = float(np.abs(acts - want_acts).max())
    mesh = sharding.make_mesh(2, 4)
    _, loaded = jaxskill.load_model(path, dtype=jnp.float64, mesh=mesh, layout="tensor")
    out[f"{name}_load_same"] = all(jax.tree.leaves(jax.tree.map(
        lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))), loaded, params)))
    out[f"{name}_logit_scale"] = float(np.abs(want_logits).max())
  Path(dst).write_text(json.dumps(out))


if __name__ == "__main__":
  main(sys.argv[1])
