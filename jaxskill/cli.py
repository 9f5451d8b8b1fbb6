"""`jaxskill` command line: demo, convert, export, train, find, verify, report, run."""

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


def cmd_verify(args) -> int:
  from jaxskill.verify import verify
  config = _run_config(args)
  results = verify(config, progress=not args.no_progress)
  print(f"run dir: {config.run_dir}")
  for line in verify_lines(results):
    print(line)
  return 0


def verify_lines(results: dict) -> list[str]:
  """The headline of verify.json: accuracy with the top-K perturbed against random-K."""
  base = results["baseline"]["accuracy"]
  k = str(results["k"])
  lines = [f"{results['split']} accuracy without perturbation: {base:.4f} "
           f"(n={results['n']})"]
  for sel, per_sel in results["selections"].items():
    for mode, per_k in per_sel["modes"].items():
      row = per_k[k]
      ratio = "n/a" if row["drop_ratio"] is None else f"{row['drop_ratio']:.1f}x"
      lines.append(
          f"  top-{k} by {sel}, {mode}: accuracy {row['top']['accuracy']:.4f} "
          f"(drop {row['accuracy_drop']:+.4f}); random-{k} x{results['random_draws']}: drop "
          f"{row['random_accuracy_drop_mean']:+.4f} +- {row['random_accuracy_drop_std']:.4f}; "
          f"ratio {ratio}")
  return lines


def cmd_report(args) -> int:
  from jaxskill.report import report
  try:
    out = report(args.run_dir)
  except FileNotFoundError as e:
    print(f"jaxskill report: error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {out}")
  return 0


def _print_stage(stage: str, skip: bool) -> None:
  print(f"== {stage}: {'done already, skipped' if skip else 'running'}", flush=True)


def cmd_run(args) -> int:
  from jaxskill.pipeline import run
  config = _run_config(args)
  run(config, progress=not args.no_progress, on_stage=_print_stage)
  _print_results(config.run_dir)
  return 0


def _print_results(run_dir) -> None:
  import json
  import numpy as np
  from jaxskill.report import last_digit_shortcut
  print(f"run dir: {run_dir}")
  train = json.loads((run_dir / "train_summary.json").read_text())
  print(f"prompt training: dev accuracy {train['dev_accuracy_at_init']} at init -> "
        f"{train['best_dev_accuracy']} best")
  summary = json.loads((run_dir / "summary.json").read_text())
  for name, m in summary["metrics"].items():
    best = m["top_k"][0] if m["top_k"] else None
    print(f"  {name:>34}: max|r| {m['max_abs_r']:.3f} at (layer, neuron) {best}, "
          f"|r|>{summary['threshold']}: {m['above_threshold']}")
  verify = json.loads((run_dir / "verify.json").read_text())
  for line in verify_lines(verify):
    print(line)
  if (run_dir / "activations.npz").exists():
    verdict = last_digit_shortcut(dict(np.load(run_dir / "activations.npz")))
    if verdict is not None:
      best = verdict["neurons"][0]
      print(f"last-digit shortcut neuron? {verdict['answer']}: best candidate layer "
            f"{best['layer']} neuron {best['neuron']} at {best['position']}: AUC correct vs "
            f"last-digit-wrong {best['auc_last_digit_wrong']:.3f}, correct vs elsewhere-wrong "
            f"{best['auc_elsewhere_wrong']:.3f} ({verdict['criterion']})")
  print(f"report: {run_dir / 'report.html'}")


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
  p = sub.add_parser("verify", help="perturb the neurons found: jaxskill verify CONFIG [k=v ...]")
  p.add_argument("config")
  p.add_argument("overrides", nargs="*")
  p.add_argument("--no-progress", action="store_true")
  p.set_defaults(func=cmd_verify)
  p = sub.add_parser("report", help="figures and report.html of a run dir: jaxskill report DIR")
  p.add_argument("run_dir")
  p.set_defaults(func=cmd_report)
  p = sub.add_parser("run", help="train, find, verify, report: jaxskill run CONFIG [k=v ...]")
  p.add_argument("config")
  p.add_argument("overrides", nargs="*")
  p.add_argument("--no-progress", action="store_true")
  p.set_defaults(func=cmd_run)
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
