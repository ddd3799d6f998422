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
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# declared but used without an import statement of ours, with the reason
USED_WITHOUT_IMPORT = {
    "gguf": "transformers reads the embedded SmolLM2 GGUF file with it",
    "accelerate": "transformers' Trainer and DeepSpeed integration require it",
    "pytest": "the test runner",
    "ruff": "the linter .ci/run runs",
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
                    assert _distribution(top) in core, \
                        f"{path.name} imports {top} at module level; not a core dependency"


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


# --- the architecture ---------------------------------------------------------------------------------

PACKAGE = ROOT / "space"
WINGS = ("kernels", "adapters", "decoding", "training", "eval", "bench")  # space/<wing>/; the rest is the spine


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path], module_level: bool) -> set[str]:
    """The package's modules `path` imports (`from package import submodule` counts as the submodule); with
    `module_level`, only the imports that run when the module is imported."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
            for alias in node.names:
                found.add(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module)
    return found - {_module_name(path)}


def _wing(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in WINGS else None


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` (node -> successors), or None."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for successor in sorted(graph.get(node, ())):
            if state.get(successor) == "open":
                return path[path.index(successor):] + [successor] if successor in path else [node, successor]
            if successor not in state:
                found = visit(successor, path + [successor])
                if found:
                    return found
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [node])
            if found:
                return found
    return None


def test_no_module_imports_itself_back():
    """No cycle of module-level imports anywhere in the package: every module can be imported first."""
    modules = _modules()
    graph = {name: _imports(path, modules, module_level=True) for name, path in modules.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_wings_import_each_other_in_one_direction():
    """kernels, adapters, decoding, training, eval and the benchmarks wing depend on each other without a cycle
    (lazy imports inside functions count too): shared pieces live in the lower wing or the spine."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        for imported in _imports(path, modules, module_level=False):
            if _wing(name) and _wing(imported) and _wing(name) != _wing(imported):
                graph.setdefault(_wing(name), set()).add(_wing(imported))
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    assert "bench" not in set().union(*graph.values()), "the benchmarks wing is imported by another wing"


def test_the_spine_is_small():
    """At most 10 modules directly under space/ (the spine); every other module sits in a wing."""
    spine = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(spine) <= 10, spine
    folders = {path.name for path in PACKAGE.iterdir() if path.is_dir() and (path / "__init__.py").is_file()}
    assert folders == set(WINGS), folders


def _levels_up(node: ast.AST) -> int | None:
    """How many directories above a module's own file a `Path(__file__)...` expression goes, or None."""
    levels = 0
    while True:
        if isinstance(node, ast.Attribute) and node.attr == "parent":
            levels, node = levels + 1, node.value
        elif (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute)
              and node.value.attr == "parents" and isinstance(node.slice, ast.Constant)):
            levels, node = levels + node.slice.value + 1, node.value.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "resolve":
            node = node.func.value
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Path" and node.args:
            return levels if getattr(node.args[0], "id", None) == "__file__" else None
        else:
            return None


def test_no_library_module_reads_a_path_outside_the_package():
    """Paths the library derives from its own files stay inside space/ (configs and data are package data,
    `space.io.shipped`), so an installed wheel works like a checkout."""
    for path in PACKAGE.rglob("*.py"):
        depth = len(path.relative_to(PACKAGE).parts) - 1  # folders between the module and space/
        for node in ast.walk(ast.parse(path.read_text())):
            levels = _levels_up(node)
            # `levels` parents of the file: its folder is 1 up, space/ is depth + 1 up
            assert levels is None or levels <= depth + 1, f"{path.relative_to(ROOT)} reads {levels} folders up"
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not node.value.startswith(("configs/", "../")), f"{path.relative_to(ROOT)}: {node.value!r}"


def test_every_shipped_file_is_package_data(tmp_path):
    """The wheel carries what the library reads from its own folder: configs, vendored data, the shipped model."""
    import shutil
    import zipfile

    source = tmp_path / "source"  # a fresh copy: a build/ folder left in the checkout would hide a missing glob
    shutil.copytree(PACKAGE, source / "space", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w",
                    str(tmp_path), str(source)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("space-*.whl")
    packed = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("configs", "default_model", "eval/data", "hub"):
        for path in (PACKAGE / folder).rglob("*"):
            if path.is_file() and (folder == "hub" and "__pycache__" not in path.parts
                                   or path.suffix in (".json", ".yaml", ".gz", ".safetensors", ".jsonl")):
                assert str(path.relative_to(ROOT)) in packed, f"{path.relative_to(ROOT)} is not in the wheel"


def test_a_deprecation_the_project_triggers_fails_the_tests():
    """A DeprecationWarning or FutureWarning attributed to the project's own code is an error under the test
    configuration (the warnings that announce the next transformers break); third-party ones are ignored only by
    name in pyproject.toml."""
    import pytest

    for category in (DeprecationWarning, FutureWarning):
        with pytest.raises(category):
            exec(compile(f"import warnings\nwarnings.warn('old API', {category.__name__})", "space/deprecated.py",
                         "exec"), {"__name__": "space.deprecated"})
    filters = PYPROJECT["tool"]["pytest"]["ini_options"]["filterwarnings"]
    assert not [f for f in filters if f.startswith("ignore::")], "a whole warning category is ignored"
