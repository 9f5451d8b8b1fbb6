"""Shapes in types: the modules tests/conftest.py checks (jaxtyping annotations, beartype) refuse
an array of the wrong rank or of inconsistent dimensions at the call, naming the argument, and
every public function of them annotates its array arguments."""

import inspect
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import TypeCheckError

from tests.conftest import TYPE_CHECKED


def test_the_checked_modules_refuse_wrong_shapes():
  from jaxskill.model import forward
  from jaxskill.stats import densities, selection
  assert all(name in sys.modules for name in TYPE_CHECKED[:3])
  scores, pos = selection.neuron_scores(np.zeros((2, 3, 4)))
  assert scores.shape == pos.shape == (2, 4)
  with pytest.raises(TypeCheckError, match="r"):
    selection.neuron_scores(np.zeros((2, 4)))  # [l, i]: a position axis is missing
  with pytest.raises(TypeCheckError):
    densities.metric_groups(np.zeros((3, 2)), "m")  # values are one per example
  assert densities.kde(np.zeros(5), np.linspace(0, 1, 7)).shape == (7,)
  batch_like = type("B", (), {"label": jnp.zeros(2, jnp.int32)})
  with pytest.raises(TypeCheckError):  # logits and labels must agree on b
    forward.metrics(jnp.zeros((2, 5)), batch_like, "classification", jnp.zeros((2, 2)))


def test_public_functions_of_the_checked_modules_annotate_their_arrays():
  import importlib
  for name in TYPE_CHECKED:
    module = importlib.import_module(name)
    for fname, fn in vars(module).items():
      if fname.startswith("_") or not inspect.isfunction(fn) or fn.__module__ != name:
        continue
      hints = inspect.get_annotations(fn, eval_str=False)
      assert "return" in hints, f"{name}.{fname}: no return annotation"
      for param in inspect.signature(fn).parameters:
        if param in ("model", "params", "prompt", "self", "batch"):
          continue  # module, param tree, prompt dict, typed Batch
        assert param in hints, f"{name}.{fname}: {param} is not annotated"
