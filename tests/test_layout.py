"""The package layout: each package imports only the packages below it, and no two modules import each other."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / 'spt_jax'
# Top to bottom; 'spt_jax' is the entry points at the top level. The README's code map lists them in this order.
LAYERS = ('spt_jax', 'hardware', 'train', 'analysis', 'evals', 'interop', 'model', 'data', 'storage')
# The command-line convention every entry point follows, spt_jax.data's included: any layer may import it, as it
# imports nothing of spt_jax (checked below).
EVERY_LAYER = ('spt_jax.cli',)


def _module_name(path):
  return '.'.join(path.relative_to(ROOT.parent).with_suffix('').parts).removesuffix('.__init__')


def _imports():
  """{module: set of spt_jax modules it imports}, at any depth of the file (imports inside functions too)."""
  modules = {_module_name(p): p for p in ROOT.rglob('*.py')}
  graph = {}
  for name, path in modules.items():
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module and node.module.split('.')[0] == 'spt_jax':
        for alias in node.names:
          full = f'{node.module}.{alias.name}'
          targets.add(full if full in modules else node.module)
      elif isinstance(node, ast.Import):
        targets.update(a.name for a in node.names if a.name.split('.')[0] == 'spt_jax')
    graph[name] = {t for t in targets if t != name}
  return graph


def _layer(module):
  parts = module.split('.')
  return 'spt_jax' if len(parts) == 1 or (ROOT / parts[1]).is_file() or f'{parts[1]}' not in LAYERS else parts[1]


def test_every_package_is_in_a_layer():
  packages = {p.name for p in ROOT.iterdir() if (p / '__init__.py').exists()}
  assert packages == set(LAYERS[1:])


def test_no_import_runs_back_up():
  upward = []
  for module, targets in _imports().items():
    for target in targets:
      if target == 'spt_jax' or target in EVERY_LAYER:
        continue
      if LAYERS.index(_layer(target)) < LAYERS.index(_layer(module)):
        upward.append(f'{module} -> {target}')
  assert not upward, upward


def test_no_two_modules_import_each_other():
  graph = _imports()
  pairs = sorted({tuple(sorted((a, b))) for a, targets in graph.items() for b in targets if a in graph.get(b, ())})
  assert not pairs, pairs


def test_what_every_layer_may_import_imports_nothing_of_spt_jax():
  graph = _imports()
  assert {module: graph[module] for module in EVERY_LAYER} == {module: set() for module in EVERY_LAYER}
