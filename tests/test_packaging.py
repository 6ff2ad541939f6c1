"""The package metadata (pyproject.toml) against the code and the lock: every third-party import
is declared (module-level ones as runtime dependencies or by both hardware extras, the others at
least in an extra), the lock satisfies every declared range, and the wheel pip builds carries the
declared metadata and the shipped placement data."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
OWN_MODULES = {"recsearch", "launch", "tools", "tests"}
# torch's fused-kernel library and TorchRec come with the machine's build: the `cuda` extra
# (fbgemm-gpu + torchrec) or the `cpu` extra (fbgemm-gpu-cpu) plus torchrec installed apart.
HARDWARE_MODULES = {"fbgemm_gpu": {"fbgemm-gpu", "fbgemm-gpu-cpu"}, "torchrec": {"torchrec"}}


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def _lock() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements" / "lock.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def _imports(package: str, module_level: bool) -> dict[str, set[str]]:
    """Third-party top-level module -> files importing it (module_level: only statements run at
    import time, i.e. not inside a function)."""
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / package).rglob("*.py")):
        tree = ast.parse(path.read_text())
        nodes = _module_level_nodes(tree) if module_level else ast.walk(tree)
        for node in nodes:
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in OWN_MODULES:
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def _module_level_nodes(tree: ast.Module) -> list[ast.AST]:
    """Statements executed when the module is imported (descending into if/try/with, not into
    function or class bodies' functions)."""
    out: list[ast.AST] = []
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        out.append(node)
        for field in ("body", "orelse", "finalbody", "handlers"):
            todo.extend(getattr(node, field, []) or [])
    return out


def _distributions(module: str) -> set[str]:
    if module in HARDWARE_MODULES:
        return HARDWARE_MODULES[module]
    dists = packages_distributions().get(module)
    assert dists, f"{module} is imported but not installed here"
    return {canonicalize_name(d) for d in dists}


def test_every_import_of_the_package_is_declared():
    project = _project()
    runtime = _names(project["dependencies"])
    extras = {name: _names(reqs) for name, reqs in project["optional-dependencies"].items()}
    declared = runtime.union(*extras.values())
    hardware = extras["cpu"] | extras["cuda"]
    problems = []
    for module, files in _imports("recsearch", module_level=True).items():
        dists = _distributions(module)
        if not dists & runtime and not (module in HARDWARE_MODULES and dists & hardware):
            problems.append(f"{module} (imported when {sorted(files)[0]} loads) is no runtime dependency")
    for package in ("recsearch", "launch"):
        for module, files in _imports(package, module_level=False).items():
            if not _distributions(module) & declared:
                problems.append(f"{module} (imported by {sorted(files)[0]}) is declared nowhere")
    assert not problems, "\n".join(problems)
    # what the two hardware extras must provide between them
    assert {"fbgemm-gpu", "torchrec"} <= extras["cuda"] and "fbgemm-gpu-cpu" in extras["cpu"]
    assert not (extras["cpu"] & {"torchrec", "fbgemm-gpu"})  # would overwrite the CPU build


def test_the_lock_satisfies_every_declared_range_and_holds_each_declared_package():
    project = _project()
    lock = _lock()
    requirements = list(project["dependencies"])
    for reqs in project["optional-dependencies"].values():
        requirements += reqs
    problems = []
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        # the lock holds the CPU build; the CUDA one (fbgemm-gpu) has the same version numbers
        pinned = lock.get(name) or (lock.get("fbgemm-gpu-cpu") if name == "fbgemm-gpu" else None)
        if pinned is None:
            problems.append(f"{req.name} is declared but not in requirements/lock.txt")
        elif not req.specifier.contains(pinned, prereleases=True):
            problems.append(f"{req.name}: the lock's {pinned} is outside the declared {req.specifier}")
    assert not problems, "\n".join(problems)
    install = (REPO / "tools" / "install.sh").read_text()
    fbgemm = lock["fbgemm-gpu-cpu"]
    assert f'"fbgemm-gpu=={fbgemm}"' in install and f'"fbgemm-gpu-cpu=={fbgemm}"' in install


def test_the_build_needs_no_setuptools_in_the_environment():
    raw = tomllib.loads((REPO / "pyproject.toml").read_text())
    system = raw["build-system"]
    assert system["build-backend"] == "setuptools.build_meta"
    assert any(canonicalize_name(Requirement(r).name) == "setuptools" for r in system["requires"])
    assert "--no-build-isolation" not in (REPO / "tools" / "install.sh").read_text()
    assert not (REPO / "setup.py").exists()  # pip would run it with the environment's setuptools


@pytest.mark.slow
def test_the_wheel_carries_the_declared_metadata_and_the_placement_data(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("recsearch-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(meta_name).decode())
    project = _project()
    requires = metadata.get_all("Requires-Dist")
    assert {str(Requirement(r)) for r in requires if "extra ==" not in r} == {
        str(Requirement(r)) for r in project["dependencies"]
    }
    assert set(metadata.get_all("Provides-Extra")) == set(project["optional-dependencies"])
    shipped = {n for n in names if "/placement/data/" in n}
    in_git = subprocess.run(
        ["git", "ls-files", "recsearch/placement/data"], cwd=REPO, capture_output=True, text=True,
        check=True,
    ).stdout.split()
    assert in_git and set(in_git) == shipped
    assert not [n for n in names if n.startswith("tests/")]
