"""The subpackages import only downward: utils is the bottom, the commands (dit_jax/*.py) the top.

Every `import dit_jax...` in the package, at module level or inside a function, is read with ast.
"""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dit_jax")

# Lowest first. A subpackage may import itself and the subpackages of lower layers; the packages of one layer
# are independent of each other. The command modules (train.py, sample.py, ...) may import anything, and no
# subpackage may import them.
LAYERS = [
    {"utils"},                           # accelerator peaks, pictures, profiles, weight paths
    {"models", "diffusion", "text"},     # the network; noise schedules, losses, samplers; text encoders
    {"data"},                            # preparation (encodes captions with text) and the loader
    {"training", "evaluation"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def imported_modules(source):
    """(line, "dit_jax.x.y") for every dit_jax import in `source`, wherever it stands."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "dit_jax")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "dit_jax":  # from dit_jax import data, train
                yield from ((node.lineno, f"dit_jax.{a.name}") for a in node.names)
            elif node.module.startswith("dit_jax."):
                yield node.lineno, node.module


def violations(package, source):
    """Imports of `source` (a module of subpackage `package`) that go up or sideways, as messages."""
    found = []
    for line, module in imported_modules(source):
        target = module.split(".")[1]
        if target == package:
            continue
        if target not in RANK:  # a command module (or a subpackage missing from LAYERS, reported below)
            found.append(f"line {line}: imports {module}, which is not below {package}")
        elif RANK[target] >= RANK[package]:
            found.append(f"line {line}: imports {module}, which is not below {package} (layers: {LAYERS})")
    return found


def subpackages():
    return sorted(d for d in os.listdir(PACKAGE) if os.path.isfile(os.path.join(PACKAGE, d, "__init__.py")))


def test_every_subpackage_has_a_layer():
    missing = [p for p in subpackages() if p not in RANK]
    assert not missing, f"add {missing} to LAYERS in tests/test_layering.py, above what they import"


@pytest.mark.parametrize("package", sorted(RANK))
def test_imports_go_down(package):
    found, modules = [], 0
    for folder, _, files in os.walk(os.path.join(PACKAGE, package)):
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            with open(path) as f:
                found += [f"{os.path.relpath(path, PACKAGE)} {v}" for v in violations(package, f.read())]
            modules += 1
    assert modules, f"no modules in {os.path.join(PACKAGE, package)}"
    assert not found, "\n".join(found)


def test_the_check_sees_every_form_of_import():
    source = ("import dit_jax.models.dit\n"
              "from dit_jax import train\n"
              "def f():\n"
              "    from dit_jax.diffusion.samplers import Trajectory\n"
              "    from dit_jax.utils import hub\n")
    assert [v.split(",")[0] for v in violations("utils", source)] == [
        "line 1: imports dit_jax.models.dit", "line 2: imports dit_jax.train",
        "line 4: imports dit_jax.diffusion.samplers"]
    assert violations("text", source)[0].startswith("line 1: imports dit_jax.models.dit")  # sideways
    assert len(violations("training", source)) == 1  # only the command module
