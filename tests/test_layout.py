"""The package's layout rules: no import loops (not even through imports inside functions),
package imports at module level except in the two entry points, and no test tooling on the
plugin's path."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "axolotl_selfplay"
# Entry points import a hook's or a command's module when it runs: Axolotl imports the plugin
# for every config, and the console script sets Axolotl's log level before Axolotl is imported.
LAZY_IMPORTS_ALLOWED = {"axolotl_selfplay.plugin", "axolotl_selfplay.cli"}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _package_imports(name: str, path: Path, modules) -> list[tuple[str, bool]]:
    """(imported module, inside a function) for every import of a package module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    in_function = {
        id(node)
        for fn in ast.walk(tree)
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
        for node in ast.walk(fn)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for candidate in candidates:
            if candidate in modules and candidate != name and candidate != "axolotl_selfplay":
                found.append((candidate, id(node) in in_function))
    return found


def test_no_module_imports_one_that_imports_it_back():
    modules = _modules()
    edges = {name: {target for target, _ in _package_imports(name, path, modules)} for name, path in modules.items()}

    def reaches(start: str, goal: str) -> bool:
        stack, seen = [start], set()
        while stack:
            for target in edges[stack.pop()]:
                if target == goal:
                    return True
                if target not in seen:
                    seen.add(target)
                    stack.append(target)
        return False

    loops = sorted(name for name in modules if reaches(name, name))
    assert not loops, f"modules in an import loop: {loops}"


def test_package_imports_sit_at_module_level():
    modules = _modules()
    inside = [
        f"{name} imports {target} inside a function"
        for name, path in modules.items()
        if name not in LAZY_IMPORTS_ALLOWED
        for target, in_function in _package_imports(name, path, modules)
        if in_function
    ]
    assert not inside, inside


def test_the_plugin_does_not_import_the_trainers_or_the_model_zoo():
    code = (
        "import sys, axolotl_selfplay.plugin; "
        "print(sorted(m for m in sys.modules if m.startswith('axolotl_selfplay')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = out.strip().splitlines()[-1]
    assert loaded == "['axolotl_selfplay', 'axolotl_selfplay.config', 'axolotl_selfplay.plugin']", loaded
