"""The one metrics function: it computes exactly the metrics discovery offers (forward.METRICS),
for both task kinds, so that adding a metric is one change in jaxskill/forward.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxskill import capture, forward


@pytest.mark.parametrize("kind", ["classification", "generation"])
def test_metrics_computes_exactly_the_declared_metrics(kind):
  b, t, v = 3, 5, 11
  key = jax.random.PRNGKey(0)
  if kind == "classification":
    logits = jax.random.normal(key, (b, v))
    batch = {"label": jnp.array([0, 1, 0])}
  else:
    logits = jax.random.normal(key, (b, t, v))
    batch = {"targets": jnp.ones((b, t), jnp.int32), "answer_pos": jnp.array([2, 3, 1]),
             "loss_mask": jnp.zeros((b, t), jnp.int32).at[:, 3:].set(1)}
  values = forward.metrics(logits, batch, kind, jnp.array([4, 7]))
  assert tuple(values) == forward.METRICS == capture.BUILTIN_METRICS
  for name, value in values.items():
    assert value.shape == (b,) and value.dtype == jnp.float32, name
  finite = [n for n in forward.METRICS if not (n == "label" and kind == "generation")]
  assert all(np.isfinite(np.asarray(values[n])).all() for n in finite)
