"""`jaxskill` command line: demo, convert, export, train, find."""

from __future__ import annotations

import argparse
import sys
import time

from jaxskill.model.checkpoint import DEMO_MODEL

DEMO_PROMPTS = ("Q: What is 12 plus 7?\nA:", "Q: What is 305 minus 42?\nA:",
                "Q: What is 6 times 8?\nA:")


def _dtype(name: str):
  import jax.numpy as jnp
  try:
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]
  except KeyError:
    raise SystemExit(f"--dtype must be float32 or bfloat16, got {name!r}") from None


def cmd_demo(args) -> int:
  import jax.numpy as jnp
  import numpy as np
  import jaxskill

  t0 = time.perf_counter()
  model, params = jaxskill.load_model(args.model, dtype=_dtype(args.dtype))
  tokenizer = jaxskill.load_tokenizer(args.model)
  c = model.config
  print(f"model: {args.model}\n  {c.num_hidden_layers} layers x {c.intermediate_size} neurons "
        f"= {c.num_neurons} neurons, hidden {c.hidden_size}, vocab {c.vocab_size}, "
        f"loaded in {time.perf_counter() - t0:.1f}s")
  tokenizer.padding_side = "left"
  enc = tokenizer(list(DEMO_PROMPTS), return_tensors="np", padding=True)
  ids, mask = jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"])
  t = ids.shape[1]
  # The last three tokens of every (left-padded) prompt: "?", "\n" ... "A", ":".
  positions = jnp.tile(jnp.arange(t - 3, t), (ids.shape[0], 1))
  logits, variables = model.apply({"params": params}, ids, attention_mask=mask,
                                  capture_positions=positions, mutable=["intermediates"])
  acts = np.asarray(jaxskill.neuron_activations(variables))
  print(f"logits: {tuple(logits.shape)} {logits.dtype}")
  print(f"neuron activations [batch, layers, positions, neurons]: {acts.shape}")
  print(f"  mean {acts.mean():+.4f}  std {acts.std():.4f}  max |a| {np.abs(acts).max():.4f}")
  eos = c.eos_token_ids[0] if c.eos_token_ids else -1
  new = jaxskill.greedy_generate(model, params, ids, mask, args.max_new_tokens,
                                 eos_token_id=eos, pad_token_id=c.pad_token_id or 0)
  print(f"greedy continuation ({args.max_new_tokens} tokens max):")
  for prompt, row in zip(DEMO_PROMPTS, np.asarray(new)):
    text = tokenizer.decode([int(x) for x in row if x != eos])
    print(f"  {prompt!r} -> {text!r}")
  return 0


def cmd_convert(args) -> int:
  import jaxskill
  from jaxskill.model.checkpoint import resolve_model_dir
  t0 = time.perf_counter()
  src = resolve_model_dir(args.hf_dir)
  model, params = jaxskill.load_model(src, dtype=_dtype(args.dtype))
  out = jaxskill.save_converted(args.out_dir, params, model.config, tokenizer_dir=src)
  print(f"converted {src} -> {out} in {time.perf_counter() - t0:.1f}s")
  return 0


def cmd_export(args) -> int:
  import jaxskill
  from jaxskill.model.checkpoint import resolve_model_dir
  src = resolve_model_dir(args.model)
  model, params = jaxskill.load_model(src, dtype=_dtype(args.dtype))
  out = jaxskill.export_hf(args.out_dir, params, model.config, tokenizer_dir=src)
  print(f"exported {src} -> {out} (HF format, loads with transformers)")
  return 0


def _run_config(args):
  """The merged run config of a pipeline command, with INFO logging for the run."""
  import logging
  from jaxskill.config import load_config
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  return load_config(args.config, args.overrides)


def cmd_train(args) -> int:
  from jaxskill.train import train
  config = _run_config(args)
  summary = train(config, progress=not args.no_progress)
  print(f"run dir: {config.run_dir}")
  best = summary["best_dev_accuracy"]
  print(f"best dev accuracy: {'no dev split' if best is None else f'{best:.4f}'} (steps "
        f"{summary['steps']}, resumed from {summary['resumed_from']}, truncated inputs: "
        f"{summary['truncated']})")
  return 0


def cmd_find(args) -> int:
  from jaxskill.discover import find
  config = _run_config(args)
  summary = find(config, progress=not args.no_progress)
  print(f"run dir: {config.run_dir}")
  for name, m in summary["metrics"].items():
    best = m["top_k"][0] if m["top_k"] else None
    print(f"  {name:>24}: n={m['n']:<6} max|r|={m['max_abs_r']} top (layer, neuron)={best} "
          f"|r|>{summary['threshold']}: {m['above_threshold']}")
  return 0


def build_parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(prog="jaxskill", description="Find skill neurons of Qwen1.5 LMs.")
  sub = ap.add_subparsers(dest="command", required=True)
  p = sub.add_parser("demo", help="run the shipped demo model: capture neurons, decode greedily")
  p.add_argument("--model", default=str(DEMO_MODEL), help="checkpoint dir or cached hub id")
  p.add_argument("--dtype", default="float32")
  p.add_argument("--max-new-tokens", type=int, default=12)
  p.set_defaults(func=cmd_demo)
  p = sub.add_parser("convert", help="HF Qwen1.5 dir (or cached hub id) -> orbax params")
  p.add_argument("hf_dir")
  p.add_argument("out_dir")
  p.add_argument("--dtype", default="float32")
  p.set_defaults(func=cmd_convert)
  p = sub.add_parser("export", help="a converted (or HF) dir -> HF safetensors dir")
  p.add_argument("model")
  p.add_argument("out_dir")
  p.add_argument("--dtype", default="float32")
  p.set_defaults(func=cmd_export)
  p = sub.add_parser("train", help="train a soft prompt: jaxskill train CONFIG [key=value ...]")
  p.add_argument("config", help="a YAML run config (see configs/)")
  p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.lr=1e-3")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  p.set_defaults(func=cmd_train)
  p = sub.add_parser("find", help="find skill neurons: jaxskill find CONFIG [key=value ...]")
  p.add_argument("config")
  p.add_argument("overrides", nargs="*")
  p.add_argument("--no-progress", action="store_true")
  p.set_defaults(func=cmd_find)
  return ap


def _maybe_init_distributed() -> None:
  """Multi-process runs: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID in the
  environment start `jax.distributed` (on CPU with gloo collectives)."""
  import os
  address = os.environ.get("JAX_COORDINATOR_ADDRESS")
  if not address:
    return
  import jax
  if os.environ.get("JAX_PLATFORMS", "") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    num, pid = int(os.environ["JAX_NUM_PROCESSES"]), int(os.environ["JAX_PROCESS_ID"])
  except (KeyError, ValueError):
    raise SystemExit("JAX_COORDINATOR_ADDRESS is set: JAX_NUM_PROCESSES and JAX_PROCESS_ID must "
                     "be set to integers too") from None
  jax.distributed.initialize(address, num_processes=num, process_id=pid)


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  _maybe_init_distributed()
  from jaxskill.checkpointing import CheckpointRestoreError
  from jaxskill.config import RunConfigError
  from jaxskill.model import CheckpointError, ConfigError
  from jaxskill.tasks import TaskError
  try:
    return args.func(args)
  except (CheckpointError, ConfigError, RunConfigError, TaskError, CheckpointRestoreError) as e:
    print(f"jaxskill {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
