"""The house rules, checked on the source: short functions with few parameters, and an import
graph without cycles whose folders follow the pipeline (docs/ARCHITECTURE.md)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "jaxskill"
MAX_LINES, MAX_PARAMS = 60, 8


def _modules() -> dict[str, ast.Module]:
  out = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    out[name] = ast.parse(path.read_text())
  return out


def test_functions_are_short_and_take_few_parameters():
  too_long, too_many = [], []
  for name, tree in _modules().items():
    for node in ast.walk(tree):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        a = node.args
        params = [*a.posonlyargs, *a.args, *a.kwonlyargs, *filter(None, (a.vararg, a.kwarg))]
        count = len([p for p in params if p.arg not in ("self", "cls")])
        if node.end_lineno - node.lineno + 1 > MAX_LINES:
          too_long.append(f"{name}.{node.name}")
        if count > MAX_PARAMS:
          too_many.append(f"{name}.{node.name} ({count})")
  assert not too_long, f"over {MAX_LINES} lines: {too_long}"
  assert not too_many, f"over {MAX_PARAMS} parameters: {too_many}"


def _top_level_imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
  """The jaxskill modules `name` imports when it is imported (not inside functions)."""
  out = set()
  for node in tree.body:
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxskill"):
      for alias in node.names:
        sub = f"{node.module}.{alias.name}"
        out.add(sub if sub in known else node.module)
    elif isinstance(node, ast.Import):
      out |= {a.name for a in node.names if a.name.startswith("jaxskill")}
  return {m for m in out if m != name and m in known}


def test_the_import_graph_has_no_cycle():
  modules = _modules()
  graph = {name: _top_level_imports(name, tree, set(modules)) for name, tree in modules.items()}
  state: dict[str, int] = {}  # 1: on the current path, 2: done

  def visit(node, path):
    state[node] = 1
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 1:
        raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
      if nxt not in state:
        visit(nxt, path + [nxt])
    state[node] = 2

  for name in sorted(graph):
    if name not in state:
      visit(name, [name])


def test_stages_import_no_other_stage_and_lower_floors_no_higher_one():
  """model -> tasks -> stats -> stages -> report: a folder imports none to its right (runtime/
  and the top-level modules are the tools and the drivers; only runtime/pipeline.py imports the
  stages, inside its functions)."""
  order = ["model", "tasks", "stats", "stages", "report"]
  for name, tree in _modules().items():
    parts = name.split(".")
    if len(parts) < 3 or parts[1] not in order:
      continue
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxskill."):
        target = node.module.split(".")[1]
        if target in order:
          assert order.index(target) <= order.index(parts[1]), (name, node.module)
        if parts[1] == "stages" and target == "stages":
          assert node.module == name, (name, node.module)
