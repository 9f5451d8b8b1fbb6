"""Helper for tests/test_multihost.py: discovery on the demo model in one of N processes
(jax.distributed on localhost, CPU, gloo collectives). Process 0 writes the outputs
(correlations.npz, neurons.csv, summary.json) into OUT_DIR.

  python tests/multihost_correlate.py PROCESS_ID NUM_PROCESSES PORT OUT_DIR [MODEL_PARALLEL]

With MODEL_PARALLEL > 1 the model axis (and the statistics split over it) spans the processes.
The model runs in float64 (see tests/test_multihost.py for why).
"""

import sys

import jax


def main(pid: int, nproc: int, port: str, out: str, model_parallel: int = 1) -> None:
  jax.config.update("jax_enable_x64", True)
  if nproc > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", num_processes=nproc, process_id=pid)

  import jax.numpy as jnp
  import jaxskill
  from jaxskill.model import capture
  from jaxskill.runtime.runner import Runner
  from jaxskill.runtime.sharding import make_mesh
  from jaxskill.stages import find as find_stage
  from jaxskill.stats import streaming
  from jaxskill.tasks import encode as data_lib
  from jaxskill.tasks import arithmetic_verification

  model, params = jaxskill.load_model("demo", dtype=jnp.float64)
  assert jax.tree.leaves(params)[0].dtype == jnp.float64
  tok = jaxskill.load_tokenizer("demo")
  task = arithmetic_verification(operations=("plus",), digits=(2,), n_train=44, n_dev=0,
                                 n_test=0, seed=0)
  encoded = data_lib.encode(task, "train", tok, data_lib.Layout(4, "infix", 40))
  prompt = {"embeddings": 0.05 * jax.random.normal(jax.random.PRNGKey(0),
                                                   (4, model.config.hidden_size))}
  probe = capture.Probe(model, "classification",
                        jnp.asarray(data_lib.verbalizer_ids(tok, task.verbalizer)),
                        ("prompt", "last_input"), 4,
                        ("correct", "confidence", "meta_last_digit_only"))
  r, st = streaming.correlate(probe, params, prompt, encoded,
                              runner=Runner(make_mesh(0, model_parallel), 8),
                              streaming=streaming.Streaming(merge_every=2))
  assert jax.device_count() == 4, jax.devices()
  if jax.process_index() == 0:
    from pathlib import Path
    names = ("correct", "confidence", "meta_last_digit_only")
    positions = [f"prompt{j}" for j in range(4)] + ["last_input"]
    from jaxskill.config import FindConfig
    found = find_stage.Found(r, names, tuple(positions), st["n"], len(encoded))
    find_stage.write_outputs(Path(out), found, FindConfig(top_k=10, top_p_per_layer=0.01,
                                                          threshold=0.5, fdr_q=0.05), {})


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], *map(int, sys.argv[5:]))
