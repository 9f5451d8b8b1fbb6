"""The README's first command: `jaxskill demo` on the shipped checkpoint."""

import json
import re

import jaxskill
from jaxskill import cli


def test_demo_runs_on_shipped_model(capsys):
  assert cli.main(["demo", "--max-new-tokens", "4"]) == 0
  out = capsys.readouterr().out
  config = json.loads((cli.DEMO_MODEL / "config.json").read_text())
  shape = (len(cli.DEMO_PROMPTS), config["num_hidden_layers"], 3, config["intermediate_size"])
  assert f"neuron activations [batch, layers, positions, neurons]: {shape}" in out
  assert len(re.findall(r"-> '", out)) == len(cli.DEMO_PROMPTS)


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
