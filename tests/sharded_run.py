"""Helper for tests/test_sharding.py, run in a subprocess with 8 fake CPU devices: the same
forward, capture, prompt-training step and correlation on one device and on a (2 data x 4 model)
mesh with the params split (tensor and fsdp layouts). Writes the results to an .npz."""

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

import jaxskill
from jaxskill.config import TrainConfig
from jaxskill.model import capture
from jaxskill.runtime import sharding
from jaxskill.runtime.runner import Runner
from jaxskill.stages.train import make_optimizer, train_step
from jaxskill.stats import streaming
from jaxskill.tasks import encode as data_lib
from jaxskill.tasks import arithmetic_verification


def trained_prompt(model, placed, shardings, prompt, encoded, verbalizer, mesh):
  """The prompt after one training step on the first 8 examples (params placed on `mesh`)."""
  replicated, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  batch = jax.tree.map(jnp.asarray, encoded.batch().rows(np.arange(8)))
  optimizer = make_optimizer(TrainConfig(lr=1e-2))
  state = {"prompt": prompt, "opt_state": optimizer.init(prompt), "step": jnp.int32(0),
           "rng": jax.random.PRNGKey(1)}
  step = jax.jit(functools.partial(train_step, model=model, optimizer=optimizer,
                                   kind="classification", verbalizer=jnp.asarray(verbalizer),
                                   input_cols=int(encoded.prompt_start[0])),
                 in_shardings=(replicated, shardings, rows), out_shardings=replicated)
  state, _ = step(jax.device_put(state, replicated), placed, jax.device_put(batch, rows))
  return np.asarray(state["prompt"]["embeddings"])


def correlations(model, placed, prompt, encoded, verbalizer, mesh):
  """`streaming.correlate` of three metrics at the prompt and last-input sites, batches of 8."""
  probe = capture.Probe(model, "classification", jnp.asarray(verbalizer),
                        ("prompt", "last_input"), 4,
                        ("label", "confidence", "meta_last_digit_only"))
  r, _ = streaming.correlate(probe, placed, prompt, encoded, runner=Runner(mesh, 8))
  return np.asarray(r)


def run(mesh, layout, params, model, encoded, verbalizer):
  replicated, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  placed, shardings = sharding.place_params(params, mesh, layout)
  c = model.config
  prompt = {"embeddings": 0.05 * jax.random.normal(jax.random.PRNGKey(0), (4, c.hidden_size))}
  batch = jax.tree.map(jnp.asarray, encoded.batch().rows(np.arange(8)))
  positions = jnp.tile(jnp.arange(batch.input_ids.shape[1]), (8, 1))

  @functools.partial(jax.jit, in_shardings=(shardings, rows, rows), out_shardings=replicated)
  def forward(params, ids, positions):
    logits, variables = model.apply({"params": params}, ids, capture_positions=positions,
                                    mutable=["intermediates"])
    return logits, jaxskill.neuron_activations(variables)

  logits, acts = forward(placed, batch.input_ids, positions)
  trained = trained_prompt(model, placed, shardings, prompt, encoded, verbalizer, mesh)
  r = correlations(model, placed, prompt, encoded, verbalizer, mesh)
  split_dims = sum(s.spec != P(*([None] * len(s.spec))) for s in jax.tree.leaves(
      shardings, is_leaf=lambda x: isinstance(x, NamedSharding)))
  return {"logits": np.asarray(logits), "acts": np.asarray(acts),
          "prompt": trained, "r": r,
          "split_params": np.int64(split_dims),
          "gate_shard": np.asarray(placed["layers"]["mlp"]["gate_proj"]["kernel"]
                                   .addressable_shards[0].data.shape)}


def main(dst):
  assert jax.device_count() == 8, jax.devices()
  model, params = jaxskill.load_model("demo")
  tok = jaxskill.load_tokenizer("demo")
  task = arithmetic_verification(operations=("plus", "minus"), digits=(2,), n_train=36,
                                 n_dev=0, n_test=0, seed=0)
  encoded = data_lib.encode(task, "train", tok, data_lib.Layout(4, "infix", 40))
  verbalizer = data_lib.verbalizer_ids(tok, task.verbalizer)
  out = {}
  for name, mesh, layout in (("single", sharding.make_mesh(1, 1), "tensor"),
                             ("tensor", sharding.make_mesh(2, 4), "tensor"),
                             ("fsdp", sharding.make_mesh(2, 4), "fsdp")):
    for key, value in run(mesh, layout, params, model, encoded, verbalizer).items():
      out[f"{name}_{key}"] = value
  # Loading straight into the sharded layout: each device's shard is read on its own.
  from jaxskill.model import checkpoint as ck
  reads, original = [], ck.LazyParam.read

  def spy(self, index=None):
    out = original(self, index)
    reads.append((self.shape, out.shape))
    return out
  ck.LazyParam.read = spy
  try:
    _, loaded = jaxskill.load_model("demo", mesh=sharding.make_mesh(2, 4), layout="tensor")
  finally:
    ck.LazyParam.read = original
  want = sharding.param_shardings(params, sharding.make_mesh(2, 4), "tensor")
  out["load_same_values"] = np.int64(all(jax.tree.leaves(jax.tree.map(
      lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))), loaded, params))))
  out["load_same_layout"] = np.int64(all(jax.tree.leaves(jax.tree.map(
      lambda a, s: a.sharding.is_equivalent_to(s, a.ndim), loaded, want))))
  gate = tuple(params["layers"]["mlp"]["gate_proj"]["kernel"].shape)
  out["load_gate_reads"] = np.asarray([r for shape, r in reads if shape == gate])

  # The stages themselves, from a config: training, then find's correlations.npz.
  from pathlib import Path
  from jaxskill.config import load_config
  from jaxskill.runtime.pipeline import run as run_stages  # `run` is this file's own function
  for name, mesh in (("single", ("1", "1")), ("tensor", ("2", "4"))):
    config = load_config(None, [
        f"out_dir={Path(dst).parent / 'runs'}", f"name={name}", "task.operations=plus,minus",
        "task.digits=2", "task.n_train=32", "task.n_dev=8", "task.n_test=8", "train.steps=3",
        "train.batch_size=8", "train.eval_every=3", "data.max_length=40", "prompt.length=4",
        "find.batch_size=8", "find.metrics=label,confidence,meta_last_digit_only",
        f"train.data_parallel={mesh[0]}", f"train.model_parallel={mesh[1]}"])
    run_stages(config, until="find", progress=False)
    r = np.load(config.run_dir / "correlations.npz")
    for metric in r.files:
      out[f"{name}_npz_{metric}"] = r[metric]
  np.savez(dst, **out)


if __name__ == "__main__":
  main(sys.argv[1])
