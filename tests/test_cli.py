"""The README's first command: `jaxskill demo` on the shipped checkpoint."""

import re

import jaxskill
from jaxskill import cli


def test_demo_runs_the_pipeline_on_the_shipped_model(capsys, tmp_path):
  """The README's first command, made small: every stage runs and the answer is printed."""
  small = [f"out_dir={tmp_path}", "task.n_train=48", "task.n_dev=16", "task.n_test=32",
           "train.steps=4", "train.batch_size=8", "train.eval_every=2", "find.batch_size=16",
           "verify.k_list=1,2", "verify.k=2", "verify.random_draws=2", "verify.modes=zero",
           "verify.batch_size=16"]
  assert cli.main(["demo", "--no-progress", *small]) == 0
  out, err = capsys.readouterr()
  assert len(re.findall(r"greedy: .* -> '", out)) == len(cli.DEMO_PROMPTS)
  for stage in ("train", "find", "verify", "report"):
    assert f"== {stage}: running" in out
  # 4 steps and 16 dev examples cannot show learning at alpha 0.01: said last, on stderr, and no
  # answer to the shortcut question is drawn from such a prompt.
  assert err.strip().splitlines()[-1].startswith("warning: the prompt of demo did not learn")
  assert re.search(r"last-digit shortcut neuron\? insufficient evidence \(computed on an "
                   r"untrained prompt\): the prompt did not learn", out)
  assert (tmp_path / "demo" / "report.html").exists()


def test_shipped_model_loads_in_transformers():
  """The shipped checkpoint is a real HF directory: transformers agrees with jaxskill."""
  import numpy as np
  import torch
  from transformers import AutoModelForCausalLM
  hf = AutoModelForCausalLM.from_pretrained(cli.DEMO_MODEL, attn_implementation="eager").eval()
  model, params = jaxskill.load_model(cli.DEMO_MODEL)
  tok = jaxskill.load_tokenizer(cli.DEMO_MODEL)
  ids = tok(list(cli.DEMO_PROMPTS[:1]), return_tensors="np")["input_ids"]
  with torch.no_grad():
    want = hf(torch.tensor(ids)).logits.numpy()
  np.testing.assert_allclose(np.asarray(model.apply({"params": params}, ids)), want, atol=1e-4,
                             rtol=0)


def test_shipped_tokenizer_loads_with_autotokenizer():
  """The organism's tokenizer is a plain HF tokenizer: AutoTokenizer reads it, digits are single
  tokens (as in Qwen's), and the verbalizer words are one token each."""
  from transformers import AutoTokenizer
  tok = AutoTokenizer.from_pretrained(cli.DEMO_MODEL)
  text = "Q: What is 86 plus 53?\nA: 139\nCorrect? no"
  ids = tok(text, add_special_tokens=False)["input_ids"]
  assert tok.decode(ids) == text
  pieces = tok.convert_ids_to_tokens(ids)
  assert [p for p in pieces if any(c.isdigit() for c in p)] == list("8653") + ["1", "3", "9"]
  assert len(tok(" yes", add_special_tokens=False)["input_ids"]) == 1
  assert len(tok(" no", add_special_tokens=False)["input_ids"]) == 1
  assert tok.eos_token == "<|endoftext|>"


def test_distributed_settings_from_config_and_environment(tmp_path):
  import argparse
  import pytest
  config = tmp_path / "c.yaml"
  config.write_text("distributed:\n  coordinator_address: host0:1234\n  num_processes: 4\n")
  args = argparse.Namespace(config=str(config), overrides=[])
  assert cli.distributed_settings(args, {"JAX_PROCESS_ID": "2"}) == {
      "coordinator_address": "host0:1234", "num_processes": 4, "process_id": 2}
  # The environment wins field by field; a one-process config stays one process.
  assert cli.distributed_settings(args, {"JAX_PROCESS_ID": "1", "JAX_NUM_PROCESSES": "2"})[
      "num_processes"] == 2
  single = argparse.Namespace(config=None)
  assert cli.distributed_settings(single, {}) is None
  assert cli.distributed_settings(single, {"JAXSKILL_DISTRIBUTED": "auto"}) == {}
  with pytest.raises(SystemExit, match="process_id=-1"):
    cli.distributed_settings(args, {})  # the per-process id was never given
