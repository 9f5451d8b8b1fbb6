"""The one metrics function: it computes exactly the metrics discovery offers (forward.METRICS),
for both task kinds, so that adding a metric is one change in jaxskill/model/forward.py."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxskill.model import capture, forward
from jaxskill.model.batch import Batch


@pytest.mark.parametrize("kind", ["classification", "generation"])
def test_metrics_computes_exactly_the_declared_metrics(kind):
  b, t, v = 3, 5, 11
  key = jax.random.PRNGKey(0)
  zeros = jnp.zeros((b, t), jnp.int32)
  batch = Batch(input_ids=zeros, attention_mask=zeros + 1, prompt_index=zeros - 1,
                answer_pos=jnp.array([2, 3, 1]), label=jnp.array([0, 1, 0]), targets=zeros + 1,
                loss_mask=zeros.at[:, 3:].set(1), input_end=jnp.full(b, 3),
                prompt_start=jnp.zeros(b, jnp.int32))
  if kind == "classification":
    logits = jax.random.normal(key, (b, v))
  else:
    logits = jax.random.normal(key, (b, t, v))
  values = forward.metrics(logits, batch, kind, jnp.array([4, 7]))
  assert tuple(values) == forward.METRICS == capture.BUILTIN_METRICS
  for name, value in values.items():
    assert value.shape == (b,) and value.dtype == jnp.float32, name
  finite = [n for n in forward.METRICS if not (n == "label" and kind == "generation")]
  assert all(np.isfinite(np.asarray(values[n])).all() for n in finite)


class GenerationMetricsTest(chex.TestCase):
  """The generation metrics, jitted and not (chex variants), against numpy float64 written from
  their definitions in forward.METRICS' comments."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_generation_metrics_match_numpy(self):
    b, t, v = 4, 6, 9
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((b, t, v)) * 3
    targets = rng.integers(0, v, (b, t))
    targets[1, 2:5] = logits[1, 2:5].argmax(-1)  # row 1 all correct on its answer tokens
    loss_mask = np.zeros((b, t), np.int64)
    answer_pos = np.array([1, 2, 0, 3])
    for row, (start, stop) in enumerate([(1, 4), (2, 5), (0, 1), (3, 6)]):
      loss_mask[row, start:stop] = 1
    zeros = np.zeros((b, t), np.int64)
    batch = Batch(input_ids=zeros, attention_mask=zeros + 1, prompt_index=zeros - 1,
                  answer_pos=answer_pos, label=np.full(b, -1), targets=targets,
                  loss_mask=loss_mask, input_end=answer_pos, prompt_start=np.zeros(b, np.int64))
    with jax.enable_x64(True):
      fn = self.variant(lambda lg, bt: forward.metrics(lg, bt, "generation", jnp.zeros(1, int)))
      got = jax.tree.map(np.asarray, fn(jnp.asarray(logits), jax.tree.map(jnp.asarray, batch)))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    tok = np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    gold_logp = (tok * loss_mask).sum(-1) / loss_mask.sum(-1)
    first = logp[np.arange(b), answer_pos]  # [b, v], the first answer token's distribution
    p = np.exp(first)
    gold_first = targets[np.arange(b), answer_pos]
    others = p.copy()
    others[np.arange(b), gold_first] = -np.inf
    want = {
        "confidence": np.exp(gold_logp), "loss": -gold_logp, "max_prob": p.max(-1),
        "margin": p[np.arange(b), gold_first] - others.max(-1),
        "correct": np.all((np.take_along_axis(logits, targets[..., None], -1)[..., 0]
                           == logits.max(-1)) | (loss_mask == 0), -1),
        "entropy": -(p * first).sum(-1)}
    assert want["correct"][1] and not want["correct"].all()  # both cases are exercised
    # Both in float64 from the same logits; a few dozen roundings each: 1e-13 is ~500 eps64.
    for name, value in want.items():
      np.testing.assert_allclose(got[name], value, atol=1e-13, rtol=0, err_msg=name)
    assert np.isnan(got["label"]).all()
