"""Helper for tests/test_sharding.py, run in a subprocess with 8 fake CPU devices and float64
enabled: the demo model's logits and captured activations computed in float64 on one device
and on a (2 data x 4 model) mesh (tensor and fsdp layouts). In float64 the split matmul sums
of the mesh differ from one device's only at the 1e-13 level, so what is left of a difference
is the program, not float32 rounding. The same for the correlations of `streaming.correlate`
(float32 statistics of the float64 activations rounded to float32), and for the prompt after
one training step. Writes the largest absolute differences to a JSON file.

  python tests/sharded_x64.py OUT.json
"""

import functools
import json
import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

import jaxskill  # noqa: E402
import sharded_run  # noqa: E402  (beside this script: its training step and correlations)
from jaxskill.runtime import sharding
from jaxskill.tasks import encode as data_lib  # noqa: E402
from jaxskill.tasks import arithmetic_verification  # noqa: E402


def forward(model, params, ids, mesh, layout, mask=None):
  """Logits and activations at every position of `ids` (and `mask`, default all ones), with the
  params placed on `mesh` in `layout`."""
  placed, shardings = sharding.place_params(params, mesh, layout)
  rows = NamedSharding(mesh, P("data"))
  positions = jnp.tile(jnp.arange(ids.shape[1]), (ids.shape[0], 1))
  mask = np.ones_like(ids) if mask is None else mask

  @functools.partial(jax.jit, in_shardings=(shardings, rows, rows, rows),
                     out_shardings=NamedSharding(mesh, P()))
  def run(params, ids, mask, positions):
    logits, variables = model.apply({"params": params}, ids, attention_mask=mask,
                                    capture_positions=positions, mutable=["intermediates"])
    return logits, jaxskill.neuron_activations(variables)

  logits, acts = run(placed, ids, mask, positions)
  return np.asarray(logits), np.asarray(acts)


def _prompt(model):
  return {"embeddings": 0.05 * jax.random.normal(jax.random.PRNGKey(0),
                                                 (4, model.config.hidden_size))}


def trained_prompt(model, params, encoded, verbalizer, mesh, layout):
  """The prompt after one training step (tests/sharded_run.py's), all in float64."""
  placed, shardings = sharding.place_params(params, mesh, layout)
  return sharded_run.trained_prompt(model, placed, shardings, _prompt(model), encoded,
                                    verbalizer, mesh)


def correlations(model, params, encoded, verbalizer, mesh, layout):
  placed, _ = sharding.place_params(params, mesh, layout)
  return sharded_run.correlations(model, placed, _prompt(model), encoded, verbalizer, mesh)


def main(dst):
  assert jax.device_count() == 8, jax.devices()
  model, params = jaxskill.load_model("demo", dtype=jnp.float64)
  assert jax.tree.leaves(params)[0].dtype == jnp.float64
  tok = jaxskill.load_tokenizer("demo")
  task = arithmetic_verification(operations=("plus", "minus"), digits=(2,), n_train=8,
                                 n_dev=0, n_test=0, seed=0)
  enc = data_lib.encode(task, "train", tok, data_lib.Layout(4, "infix", 40))
  ids = jnp.asarray(enc.input_ids)
  single = forward(model, params, ids, sharding.make_mesh(1, 1), "tensor")
  out = {"logits_dtype": str(single[0].dtype), "max_abs_logit": float(np.abs(single[0]).max()),
         "max_abs_act": float(np.abs(single[1]).max())}
  for layout in ("tensor", "fsdp"):
    logits, acts = forward(model, params, ids, sharding.make_mesh(2, 4), layout)
    out[f"{layout}_logits"] = float(np.abs(logits - single[0]).max())
    out[f"{layout}_acts"] = float(np.abs(acts - single[1]).max())
  # 36 examples in batches of 8 (as tests/sharded_run.py): 5 batches, 4 float32 merges.
  task = arithmetic_verification(operations=("plus", "minus"), digits=(2,), n_train=36,
                                 n_dev=0, n_test=0, seed=0)
  enc = data_lib.encode(task, "train", tok, data_lib.Layout(4, "infix", 40))
  verbalizer = data_lib.verbalizer_ids(tok, task.verbalizer)
  r = correlations(model, params, enc, verbalizer, sharding.make_mesh(1, 1), "tensor")
  prompt = trained_prompt(model, params, enc, verbalizer, sharding.make_mesh(1, 1), "tensor")
  out["r_defined"] = float(np.isfinite(r).mean())
  out["prompt_dtype"] = str(prompt.dtype)
  for layout in ("tensor", "fsdp"):
    other = correlations(model, params, enc, verbalizer, sharding.make_mesh(2, 4), layout)
    out[f"{layout}_r_same_nan"] = bool((np.isnan(other) == np.isnan(r)).all())
    out[f"{layout}_r"] = float(np.nanmax(np.abs(other - r)))
    out[f"{layout}_prompt"] = float(np.abs(trained_prompt(
        model, params, enc, verbalizer, sharding.make_mesh(2, 4), layout) - prompt).max())
  with open(dst, "w") as f:
    json.dump(out, f)
  print(json.dumps(out))


if __name__ == "__main__":
  main(sys.argv[1])
