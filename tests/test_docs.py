"""The documented examples run as written: every ```python block of docs/NOTEBOOK.md, in order,
in one namespace, from a directory laid out like the repository root (its configs/)."""

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["docs/NOTEBOOK.md"]


def _blocks(page: str) -> list[str]:
  return re.findall(r"^```python\n(.*?)^```", (ROOT / page).read_text(), re.M | re.S)


@pytest.mark.parametrize("page", PAGES)
def test_the_examples_of_the_docs_run(page, tmp_path, capsys, monkeypatch):
  blocks = _blocks(page)
  assert len(blocks) >= 2, page
  (tmp_path / "configs").symlink_to(ROOT / "configs")
  monkeypatch.chdir(tmp_path)
  namespace: dict = {}
  for i, code in enumerate(blocks):
    exec(compile(code, f"{page}, python block {i + 1}", "exec"), namespace)
  out = capsys.readouterr().out
  assert "('layer', 'position', 'neuron')" in out
  assert (tmp_path / "notebook_runs" / "demo" / "verify.json").exists()
  assert os.listdir(tmp_path / "notebook_runs")


def test_the_worked_example_of_the_architecture_applies():
  """docs/ARCHITECTURE.md's worked example is a diff of the current tree: `git apply --check`
  takes it (so it cannot drift from the files it changes)."""
  import subprocess
  text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
  (diff,) = re.findall(r"^```diff\n(.*?)^```", text, re.M | re.S)
  assert "jaxskill/model/forward.py" in diff and "jaxskill/model/interventions.py" in diff
  proc = subprocess.run(["git", "apply", "--check", "-"], input=diff, text=True, cwd=ROOT,
                        capture_output=True)
  assert proc.returncode == 0, proc.stderr


def test_the_layout_names_every_module():
  """Each module of jaxskill/ is in a folder the architecture page names (or at the top)."""
  text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
  for path in sorted((ROOT / "jaxskill").rglob("*.py")):
    rel = path.relative_to(ROOT / "jaxskill")
    if len(rel.parts) == 1:
      assert rel.name == "__init__.py" or rel.name in text, rel
    else:
      assert f"  {rel.parts[0]}/" in text, rel
