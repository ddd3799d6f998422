"""Packaging: what the code imports is declared, what is declared is imported, and the core install stays light.

The core install is for decoding; training (DeepSpeed), the skip-layer search (optuna) and evaluation
(plotting, pass@k, ROUGE) are extras. These tests read `pyproject.toml` and the sources, and import the
package in a fresh interpreter to check that importing it pulls no extra's heavy dependency.
"""

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# declared but used without an import statement of ours, with the reason
USED_WITHOUT_IMPORT = {
    "gguf": "transformers reads the embedded SmolLM2 GGUF file with it",
    "accelerate": "transformers' Trainer and DeepSpeed integration require it",
    "pytest": "the test runner",
}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _declared() -> dict[str, set[str]]:
    """Distribution name -> the groups declaring it ("core" or an extra's name)."""
    groups = {"core": PYPROJECT["project"]["dependencies"], **PYPROJECT["project"]["optional-dependencies"]}
    declared: dict[str, set[str]] = {}
    for group, requirements in groups.items():
        for requirement in requirements:
            name = _name(requirement)
            if name != "space":  # an extra that includes others names the package itself
                declared.setdefault(name, set()).add(group)
    return declared


def _third_party_imports(folders: list[str]) -> dict[str, set[str]]:
    """Top-level module imported -> files importing it, over the given source folders."""
    local = {"space", "tests"}
    found: dict[str, set[str]] = {}
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in local and top != "__future__":
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def _distribution(module: str) -> str:
    distributions = importlib.metadata.packages_distributions().get(module, [module])
    return distributions[0].lower().replace("_", "-")


def test_core_install_pulls_neither_deepspeed_nor_optuna():
    core = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert not core & {"deepspeed", "optuna", "matplotlib"}, core
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert any(_name(r) == "deepspeed" for r in extras["train"])
    assert any(_name(r) == "optuna" for r in extras["search"])


def test_every_import_is_declared():
    declared = _declared()
    imports = _third_party_imports(["space", "scripts", "tests"])
    undeclared = {module: sorted(files) for module, files in imports.items() if _distribution(module) not in declared}
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_library_imports_need_only_what_their_group_declares():
    """The decoding core imports only core dependencies (the extras are imported lazily or by extra modules)."""
    core = {name for name, groups in _declared().items() if "core" in groups}
    spine_and_decoding = [p for p in (ROOT / "space").glob("*.py")] + list((ROOT / "space" / "decoding").glob("*.py"))
    for path in spine_and_decoding:
        for node in ast.parse(path.read_text()).body:  # module level only: lazy imports inside functions are fine
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                module = node.names[0].name if isinstance(node, ast.Import) else (node.module or "")
                top = module.split(".")[0]
                if node_is_third_party(top):
                    assert _distribution(top) in core, f"{path.name} imports {top} at module level; not a core dependency"


def node_is_third_party(top: str) -> bool:
    return bool(top) and top not in sys.stdlib_module_names and top not in {"space", "__future__"}


def test_every_declared_dependency_is_used():
    imported = {_distribution(module) for module in _third_party_imports(["space", "scripts", "tests"])}
    unused = sorted(name for name in _declared() if name not in imported and name not in USED_WITHOUT_IMPORT)
    assert not unused, f"declared in pyproject.toml but never imported: {unused}"


def test_importing_the_package_loads_no_extra():
    code = ("import sys, space, space.decoding, space.eval, space.training; "
            "print(sorted(m for m in ('deepspeed', 'optuna', 'matplotlib', 'peft') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr


def test_scripts_only_parse_and_call_the_library():
    """No script or test edits sys.path or imports a script: pipelines live in the package."""
    scripts = {path.stem for path in (ROOT / "scripts").glob("*.py")}
    for path in list((ROOT / "scripts").glob("*.py")) + list((ROOT / "tests").glob("*.py")):
        assert not _edits_sys_path(path), f"{path.name} edits sys.path"
        imported = set(_third_party_imports_of(path))
        assert not imported & scripts, f"{path.name} imports the script(s) {sorted(imported & scripts)}"


def _third_party_imports_of(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module.split(".")[0])
    return names


def _edits_sys_path(path: Path) -> bool:
    """Whether the file calls a method of `sys.path` (insert, append, extend...)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if isinstance(owner, ast.Attribute) and owner.attr == "path" and getattr(owner.value, "id", "") == "sys":
                return True
    return False
