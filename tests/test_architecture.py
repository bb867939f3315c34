"""The shape of the code: layers, registries, one owner per fact, and what a built wheel carries."""

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "hmic"

# The stages, lowest first: a module may import from its own stage or below, never above. The top-level
# modules are the core every stage uses; hmic/__init__.py (the public surface, lazy) and the command line
# sit above everything.
STAGES = ["core", "audio", "data", "models", "runs", "evaluation", "training", "tagging", "cli", "__init__"]
CORE = {"errors", "fileio", "registry", "devices", "environment"}
TOP_LEVEL_MODULES = CORE | {"__init__", "__main__", "cli"}


def stage_of(module: str) -> str:
    head = module.split(".")[0]
    if module in CORE:
        return "core"
    if module in ("cli", "__main__"):
        return "cli"
    return head


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """hmic modules imported anywhere in the file (lazy imports inside functions count too)."""
    name = module_name(path)
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    if name == "__init__":
        package = []
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [".".join(base + [a.name]) for a in node.names]
            elif node.module == "hmic" and {a.name for a in node.names} == {"__version__"}:
                continue  # the version string, not the public surface
            elif node.module and node.module.split(".")[0] == "hmic":
                names = [node.module[len("hmic."):] if node.module != "hmic" else "__init__"]
            else:
                continue
            for n in names:
                while n and n not in MODULES and "." in n:
                    n = n.rsplit(".", 1)[0]
                if n in MODULES:
                    found.add(n)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("hmic."):
                    found.add(a.name[len("hmic."):])
                elif a.name == "hmic":
                    found.add("__init__")
    found.discard(name)
    return found


MODULES = {module_name(p) for p in PKG.rglob("*.py")}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PKG.rglob("*.py")}


def test_the_top_level_is_stages_and_a_few_core_modules():
    modules = {p.stem for p in PKG.glob("*.py")}
    packages = {p.name for p in PKG.iterdir() if (p / "__init__.py").exists()}
    assert modules == TOP_LEVEL_MODULES and len(modules) <= 8
    assert packages == set(STAGES) - {"core", "cli", "__init__"}


def test_every_stage_says_what_it_owns_and_what_it_may_import():
    for stage in set(STAGES) - {"core", "cli", "__init__"}:
        doc = ast.get_docstring(ast.parse((PKG / stage / "__init__.py").read_text())) or ""
        assert "May import:" in doc, stage


def test_no_import_goes_up_a_stage():
    rank = {s: i for i, s in enumerate(STAGES)}
    up = [f"{m} → {d}" for m, deps in graph().items() for d in deps if rank[stage_of(d)] > rank[stage_of(m)]]
    assert up == []


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for d in g.get(node, ()):
            if state.get(d) == 1:
                raise AssertionError("cycle: " + " → ".join(stack + [node, d]))
            if not state.get(d):
                visit(d, stack + [node])
        state[node] = 2

    for node in g:
        if not state.get(node):
            visit(node, [])


def test_readers_never_import_train_and_core_never_imports_cli():
    g = graph()
    assert all(not d.startswith("training") for m in g if m.startswith(("evaluation", "tagging")) for d in g[m])
    assert all("cli" not in deps for m, deps in g.items() if m != "__main__")


def test_method_names_live_only_in_the_heads_module():
    """No string equal to a registered method name anywhere in hmic/ but the heads module, save the default
    --method of the torch-free TrainConfig (the command line's help must not import torch)."""
    from hmic.models.heads import HEADS

    names = set(HEADS.names())
    allowed = {("training/config.py", "gmp")}
    offenders = []
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG).as_posix()
        if rel == "models/heads.py":
            continue
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in names and (rel, node.value) not in allowed:
                offenders.append(f"{rel}:{node.lineno}: {node.value!r}")
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "isinstance" and \
                    "head" in ast.unparse(node.args[0]):
                offenders.append(f"{rel}:{node.lineno}: isinstance on a head")
    assert names >= {"flat", "gmp", "resatt"} and offenders == []


def test_no_module_shadows_the_standard_library():
    stdlib = set(sys.stdlib_module_names)
    assert [p.name for p in PKG.glob("*.py") if p.stem in stdlib] == []


def test_the_default_hierarchy_ships_in_the_package_and_matches_the_top_level_file():
    from hmic.data.hierarchy import DEFAULT_HIERARCHY

    assert DEFAULT_HIERARCHY.is_relative_to(PKG) and DEFAULT_HIERARCHY.is_file()
    assert DEFAULT_HIERARCHY.read_bytes() == (ROOT / "hierarchy.yaml").read_bytes(), \
        "hierarchy.yaml and hmic/data/hierarchy.yaml must stay the same file"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True, text=True)
    (path,) = out.glob("hmic-*.whl")
    return path


@pytest.mark.slow
def test_built_wheel_carries_the_default_hierarchy_and_the_audioset_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "hmic/data/hierarchy.yaml" in names
    # the AudioSet model's class list, its attribution and hmic's mapping (hmic predict --model audioset)
    for data in ("audioset_class_labels_indices.csv", "AUDIOSET_LABELS.txt", "openmic_audioset.yaml"):
        assert f"hmic/data/{data}" in names
    assert "hmic/data/synth/render.py" in names


@pytest.mark.slow
def test_non_editable_install_runs_and_loads_the_default_hierarchy(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True)
    env = {**os.environ, "PYTHONPATH": str(target), "COLUMNS": "200"}
    probe = ("import hmic, hmic.data.hierarchy as h, hmic.data.audioset as a; print(hmic.__file__); "
             "print(len(h.load_hierarchy().coarse_names)); print(len(a.audioset_classes())); "
             "print(len(set(a.load_mapping().rows_for(h.load_hierarchy())[1])))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    where, n_coarse, n_classes, n_mapped = out.stdout.split()
    assert Path(where).is_relative_to(target) and n_coarse == "7"
    assert n_classes == "527" and n_mapped == "20"  # the AudioSet class list and mapping came with the wheel
    helped = subprocess.run([sys.executable, "-m", "hmic", "train", "--help"], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert helped.returncode == 0 and "--method" in helped.stdout


def test_the_public_surface_resolves_and_imports_no_torch():
    """Every name hmic/__init__.py promises is importable from ``hmic``, and ``import hmic`` alone stays
    torch-free (the names load when first used)."""
    import hmic

    for name in hmic.__all__:
        assert getattr(hmic, name) is not None, name
    probe = "import sys, hmic; hmic.__version__; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    with pytest.raises(AttributeError):
        hmic.no_such_name


@pytest.mark.slow
def test_built_wheel_carries_the_bundled_taxonomies(wheel):
    from hmic.data.taxonomy import BUNDLED

    names = zipfile.ZipFile(wheel).namelist()
    for file in list(BUNDLED.values()) + ["README.md"]:
        assert f"hmic/data/taxonomies/{file}" in names


def test_every_docs_page_the_code_points_to_exists():
    """Docstrings, comments and help texts point into docs/ (never into the README, which is a front door
    that changes shape): every page they name is in the checkout."""
    import re

    cited = {m for p in PKG.rglob("*.py") for m in re.findall(r"docs/[A-Za-z0-9_./-]+\.md", p.read_text())}
    assert cited and sorted(c for c in cited if not (ROOT / c).is_file()) == []
    assert [p.relative_to(ROOT).as_posix() for p in PKG.rglob("*.py") if "(README" in p.read_text()] == []


def test_the_tests_mirror_the_stages():
    """tests/<stage>/ for every stage (and the command line); project-wide checks stay in tests/."""
    stages = set(STAGES) - {"core", "__init__"}
    folders = {p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and list(p.glob("test_*.py"))}
    assert folders == stages
