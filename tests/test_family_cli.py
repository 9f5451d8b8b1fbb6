"""The stage commands one by one (`jaxskill train`, `find`, `verify`, `report DIR`), in bfloat16,
on a tiny checkpoint laid out like Mistral-7B-v0.1 (tests/family_like.py): the family that no
shipped config names, with a sliding window shorter than the task's inputs and a BOS-adding
tokenizer; then `export` of it as an HF directory that transformers loads as MistralForCausalLM
with the same weights."""

import json
from pathlib import Path

import numpy as np

from jaxskill import cli
from jaxskill.config import load_config
from tests.family_like import TINY_WINDOW, make_family_checkpoint
from tests.test_qwen_configs import FAST

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "qwen1.5" / "arithmetic.yaml"


def test_stage_commands_on_a_mistral_checkpoint(tmp_path, capsys):
  model_dir = make_family_checkpoint(tmp_path / "mistral", "mistralai/Mistral-7B-v0.1")
  overrides = [f"{k}={v}" for k, v in FAST.items()] + [
      f"model.path={model_dir}", "model.dtype=bfloat16", "name=mistral-tiny",
      f"out_dir={tmp_path / 'runs'}"]
  for stage in ("train", "find", "verify"):
    assert cli.main([stage, str(CONFIG), *overrides, "--no-progress"]) == 0, stage
    out = capsys.readouterr().out
    assert f"== {stage}: running" in out, (stage, out[-2000:])
  config = load_config(CONFIG, overrides)
  run_dir = config.run_dir
  assert cli.main(["report", str(run_dir), "--no-progress"]) == 0
  assert (run_dir / "report.html").read_text().lstrip().lower().startswith("<!doctype html")
  result = json.loads((run_dir / "verify.json").read_text())
  assert sorted(result["selections"]) == sorted(config.verify.selection)
  with np.load(run_dir / "correlations.npz") as corr:
    assert corr["label"].shape[0] == 2 and corr["label"].shape[-1] == 80
  # Every row starts with the tokenizer's BOS, and the inputs are longer than the window, so
  # the window bound what the neurons saw.
  with np.load(run_dir / "token_activations.npz", allow_pickle=False) as tokens:
    for row, mask in zip(tokens["tokens"], tokens["attention_mask"]):
      real = [t for t, m in zip(row, mask) if m]
      assert real[0] == "<s>" and len(real) > TINY_WINDOW, real


def test_export_of_a_llama_checkpoint_loads_in_transformers(tmp_path):
  """`jaxskill convert` then `export` of a Llama-3.2-like checkpoint (llama3 RoPE scaling, tied
  head, explicit head_dim): transformers reads the export as a LlamaForCausalLM with the same
  tensors, RoPE scaling and tokenizer."""
  import torch
  import transformers
  src = make_family_checkpoint(tmp_path / "llama", "meta-llama/Llama-3.2-1B")
  assert cli.main(["convert", str(src), str(tmp_path / "converted")]) == 0
  assert cli.main(["export", str(tmp_path / "converted"), str(tmp_path / "hf")]) == 0
  want = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
  got = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
  assert type(got).__name__ == "LlamaForCausalLM"
  assert got.config.rope_parameters["rope_type"] == "llama3"
  assert got.config.rope_parameters["factor"] == want.config.rope_parameters["factor"] == 32.0
  assert got.config.head_dim == want.config.head_dim == 8
  assert got.config.tie_word_embeddings
  sd_want, sd_got = want.state_dict(), got.state_dict()
  assert sd_got.keys() == sd_want.keys()
  for name, tensor in sd_want.items():
    assert torch.equal(sd_got[name], tensor), name
  tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
  assert tok("7")["input_ids"][0] == tok.bos_token_id
