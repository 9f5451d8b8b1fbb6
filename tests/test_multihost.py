"""Two processes under jax.distributed (localhost, CPU) give the correlations of one process."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parent / "multihost_correlate.py"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices):
  return {**os.environ, "JAX_PLATFORMS": "cpu",
          "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


@pytest.mark.parametrize("model_parallel", ["1", "4"])  # 4: the model axis spans both processes
def test_two_processes_equal_one(tmp_path, model_parallel):
  one = tmp_path / "one"
  single = subprocess.run([sys.executable, str(SCRIPT), "0", "1", "0", str(one)], env=_env(4),
                          capture_output=True, text=True, timeout=300)
  assert single.returncode == 0, single.stderr[-3000:]
  two = tmp_path / "two"
  port = str(_free_port())
  procs = [subprocess.Popen([sys.executable, str(SCRIPT), str(i), "2", port, str(two),
                             model_parallel], env=_env(2), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  a, b = np.load(one / "correlations.npz"), np.load(two / "correlations.npz")
  assert sorted(a.files) == sorted(b.files) == ["confidence", "correct", "meta_last_digit_only"]
  # The helper runs the model in float64: with the model axis split (4), the matmuls add their
  # partial sums in another order, and float32 activations moved by up to 5e3 * eps32 * |x|
  # (K ~ 5e3 summed reduction lengths of the demo forward), which moves r by twice that over
  # std(x) - no bound at all for a near-constant neuron (measured 3.5e-6 against this 1e-5).
  # In float64 the activations agree to 1e-12 and round to the same float32 values (but for
  # one within 1e-12 of a float32 midpoint), so what is left are the float32 statistics, each
  # side within r_rounding_bound(8, 1) = 3.4e-6 of the exact r (batches of 8, merged 2 at a
  # time; tests/test_stats.py): at most 6.7e-6 apart.
  for name in a.files:
    assert np.isfinite(a[name]).mean() > 0.5
    np.testing.assert_allclose(b[name], a[name], atol=1e-5, rtol=0, err_msg=name)
  sa = json.loads((one / "summary.json").read_text())
  sb = json.loads((two / "summary.json").read_text())
  assert sa["metrics"]["correct"]["n"] == sb["metrics"]["correct"]["n"] == 44


def test_an_error_in_one_process_stops_both():
  port = str(_free_port())
  script = Path(__file__).resolve().parent / "multihost_errors.py"
  procs = [subprocess.Popen([sys.executable, str(script), str(i), "2", port], env=_env(1),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=120)[0] for p in procs]
  assert [p.returncode for p in procs] == [3, 3], outs
  assert "raised: (process 1) task 't' train example 7: input is 90 tokens" in outs[0]
  assert "raised: task 't' train example 7" in outs[1]
