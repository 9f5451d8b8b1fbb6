"""The real trained checkpoints of scripts/real_models.py as a test fixture: fetched and
converted once per machine (cached), and under CI=true a fetch that fails fails the test
instead of skipping it."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "real_models.py"
# The hub ids that shipped configs name -> the real model the tests run them on, where the CI
# run of a config runs it on the real model itself (tests/test_real_experiment.py).
RUN_ON_REAL = {"HuggingFaceTB/SmolLM2-135M-Instruct": "smollm2-135m-instruct"}


def _module():
  spec = importlib.util.spec_from_file_location("real_models", _SCRIPT)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # its dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


def real_model_dir(name: str) -> Path:
  """The HF directory of real model `name` (scripts/real_models.py's MODELS)."""
  try:
    return _module().hf_dir(name)
  except (subprocess.CalledProcessError, OSError) as e:  # no registry: say so; fail under CI
    if os.environ.get("CI") == "true":
      raise
    pytest.skip(f"real model {name} not available ({type(e).__name__}: {e})")
