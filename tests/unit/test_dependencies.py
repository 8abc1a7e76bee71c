"""Every third-party module the code imports comes from a dependency pyproject.toml declares.

The relay's imports must be covered by the base dependencies (what `make run` and the image
install); the operator's by the base plus the `operator` extra. A module that only arrives
as somebody else's dependency (starlette through fastapi, cryptography through pyjwt) can
change or vanish with that other package's next release.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import re
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
EXTRAS: dict[str, list[str]] = PROJECT.get("optional-dependencies", {})
FIRST_PARTY = {"relay", "gamecluster", "gamecluster_core"}
"""gamecluster_core: the relay's compiled core, built from this repository (core/)."""


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(requirements: list[str]) -> set[str]:
    return {normalised(re.split(r"[\s\[=<>!~;]", req, maxsplit=1)[0]) for req in requirements}


def imported_modules(package: Path) -> set[str]:
    """Absolute module names imported anywhere under `package` (third-party only)."""
    found: set[str] = set()
    for source in package.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module)
    return {
        name
        for name in found
        if name.split(".")[0] not in FIRST_PARTY | set(sys.stdlib_module_names)
    }


@cache
def file_owners() -> dict[Path, str]:
    owners: dict[Path, str] = {}
    for dist in importlib.metadata.distributions():
        for file in dist.files or ():
            if file.suffix == ".py":
                owners[Path(str(file.locate())).resolve()] = normalised(dist.metadata["Name"])
    return owners


def distribution_of(module: str) -> str:
    """The installed distribution a module's file belongs to (namespace packages included)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"{module} is not installed"
    if spec.origin is not None:
        owner = file_owners().get(Path(spec.origin).resolve())
    else:  # a namespace package (no __init__.py): whoever ships the files in it
        (folder,) = [Path(p).resolve() for p in spec.submodule_search_locations or ()]
        owner = next((o for f, o in file_owners().items() if f.parent == folder), None)
    if owner is None:
        # An editable install (the Python client, `-e clients/python`) lists no module
        # files, only its top-level names.
        owners = sorted(
            set(importlib.metadata.packages_distributions().get(module.split(".")[0], []))
        )
        owner = normalised(owners[0]) if len(owners) == 1 else None
    assert owner is not None, f"no installed distribution ships {module}"
    return owner


@pytest.mark.parametrize(
    ("package", "allowed"),
    [
        ("service/relay", declared(PROJECT["dependencies"])),
        (
            "operator/gamecluster",
            declared(PROJECT["dependencies"] + EXTRAS.get("operator", [])),
        ),
    ],
)
def test_every_import_is_a_declared_dependency(package: str, allowed: set[str]) -> None:
    modules = imported_modules(REPO / package)
    assert modules, package
    undeclared = {m: distribution_of(m) for m in modules if distribution_of(m) not in allowed}
    assert undeclared == {}, f"{package} imports packages pyproject.toml does not declare"


def test_the_relay_base_install_carries_no_operator_or_test_tooling() -> None:
    base = declared(PROJECT["dependencies"])
    assert base.isdisjoint(declared(EXTRAS["operator"])), "operator deps belong to [operator]"
    assert base.isdisjoint(declared(EXTRAS["dev"]))
    assert {"kopf", "kubernetes"} <= declared(EXTRAS["operator"])


def test_every_dependency_is_pinned_exactly() -> None:
    requirements = PROJECT["dependencies"] + [req for extra in EXTRAS.values() for req in extra]
    loose = [req for req in requirements if "==" not in req]
    assert loose == []


def test_make_run_installs_the_base_only_and_the_image_the_operator_extra() -> None:
    makefile = (REPO / "Makefile").read_text()
    run_deps = re.search(r"^run:(.*)$", makefile, re.MULTILINE)
    assert run_deps is not None
    for target in run_deps.group(1).split():
        rule = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
        if rule is not None:
            assert "[" not in rule.group(1), f"`make run` installs extras through {target}"
    dockerfile = (REPO / "Dockerfile").read_text()
    assert '"gamecluster[operator]==' in dockerfile and ".[operator]" in dockerfile
