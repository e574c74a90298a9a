"""The package's layers: imports inside clipgen/ point only down the list, never by string."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "clipgen"
FOUNDATION = {"checkpoint", "atomic", "distributed", "run_info"}
LAYERS = ["foundation", "models", "data", "generation", "metrics", "evaluation", "lit", "jobs"]
# Besides the order: data readers and the cache know no model (the jobs encode).
FORBIDDEN = {("data", "models")}


def layer_of(module: str) -> str:
    """The layer of a dotted clipgen module name."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in FOUNDATION:
        return "foundation"
    if parts[1] not in LAYERS:
        raise AssertionError(f"{module} belongs to no layer: put it in one of {LAYERS} "
                             f"or the foundation {sorted(FOUNDATION)}")
    return parts[1]


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every clipgen import in a file, and of every string import."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module"
              or isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__"):
            raise AssertionError(f"{path}:{node.lineno} imports a module by string; import it")
        else:
            continue
        found += [(node.lineno, n) for n in names if n == "clipgen" or n.startswith("clipgen.")]
    return found


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def upward_imports(root: Path) -> list[str]:
    """Every import in `root` that points from a lower layer to a higher one."""
    bad = []
    for path in sorted(root.rglob("*.py")):
        here = layer_of(module_name(path, root))
        for line, target in imports(path):
            there = layer_of(target)
            if LAYERS.index(there) > LAYERS.index(here) or (here, there) in FORBIDDEN:
                bad.append(f"{path.relative_to(root.parent)}:{line} ({here}) imports {target} "
                           f"({there})")
    return bad


def test_imports_only_point_down_the_layers():
    assert upward_imports(PACKAGE) == []


def test_the_check_catches_an_upward_import(tmp_path):
    pkg = tmp_path / "clipgen"
    (pkg / "data").mkdir(parents=True)
    (pkg / "data" / "reader.py").write_text("from clipgen.models.vqgan import VQGAN\n")
    (pkg / "models").mkdir()
    (pkg / "models" / "vqgan.py").write_text("from clipgen.lit.base import ClipgenModule\n")
    assert upward_imports(pkg) == [
        "clipgen/data/reader.py:1 (data) imports clipgen.models.vqgan (models)",
        "clipgen/models/vqgan.py:1 (models) imports clipgen.lit.base (lit)"]
    (pkg / "models" / "loader.py").write_text("import importlib\n"
                                              "importlib.import_module('clipgen.lit.x')\n")
    with pytest.raises(AssertionError, match="by string"):
        upward_imports(pkg)


def test_few_modules_at_the_package_root():
    root_modules = [p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"]
    assert set(root_modules) <= FOUNDATION and len(root_modules) <= 5


def test_no_two_modules_share_a_name():
    repo = PACKAGE.parent
    files = [*PACKAGE.rglob("*.py"), *repo.glob("*.py"), *(repo / "eval").glob("*.py")]
    names = [p.stem for p in files if p.stem != "__init__"]
    packages = [p.name for p in PACKAGE.rglob("*") if (p / "__init__.py").is_file()]
    clashes = {n for n in names + packages if (names + packages).count(n) > 1}
    assert not clashes, f"module names used twice: {sorted(clashes)}"
