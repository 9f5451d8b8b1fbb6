"""The stage commands one by one (`jaxskill train`, `find`, `verify`, `report DIR`), in bfloat16,
on a tiny checkpoint laid out like Mistral-7B-v0.1 (tests/family_like.py): the family that no
shipped config names, with a sliding window shorter than the task's inputs and a BOS-adding
tokenizer; and `convert` then `export` of each family's checkpoint, which transformers loads back
as the same model."""

import json
from pathlib import Path

import numpy as np
import pytest

from jaxskill import cli
from jaxskill.config import load_config
from tests.family_like import HUB_CONFIGS, TINY_WINDOW, make_family_checkpoint
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


@pytest.mark.parametrize("hub", ["Qwen/Qwen2.5-0.5B", "Qwen/Qwen3-0.6B-Base",
                                 "meta-llama/Llama-3.2-1B", "mistralai/Mistral-7B-v0.1"])
def test_convert_then_export_loads_in_transformers(tmp_path, hub):
  """`jaxskill convert` then `export` of each family's checkpoint: transformers reads the export
  as the family's CausalLM with the same tensors (Qwen3's q/k norms, a tied head), the same
  architecture settings (llama3 RoPE scaling, Mistral's window, explicit head_dim) and the same
  tokenizer."""
  import torch
  import transformers
  src = make_family_checkpoint(tmp_path / "src", hub)
  assert cli.main(["convert", str(src), str(tmp_path / "converted")]) == 0
  assert cli.main(["export", str(tmp_path / "converted"), str(tmp_path / "hf")]) == 0
  want = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
  got = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
  assert type(got).__name__ == type(want).__name__ == HUB_CONFIGS[hub]["architectures"][0]
  for field in ("head_dim", "tie_word_embeddings", "sliding_window", "num_key_value_heads",
                "rope_parameters", "attention_bias"):
    assert getattr(got.config, field, None) == getattr(want.config, field, None), field
  sd_want, sd_got = want.state_dict(), got.state_dict()
  assert sd_got.keys() == sd_want.keys()
  for name, tensor in sd_want.items():
    assert torch.equal(sd_got[name], tensor), name
  tok, src_tok = (transformers.AutoTokenizer.from_pretrained(p) for p in (tmp_path / "hf", src))
  assert tok("Q: What is 7 plus 5?")["input_ids"] == src_tok("Q: What is 7 plus 5?")["input_ids"]
