"""The package layout: stage subpackages, and imports only in the one-way order of the stages."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "facesets"
# base < models < artifacts < sources, cluster < embed, export, store < flow, review < cli (same rank: no imports
# between)
RANK = {"base": 0, "models": 1, "artifacts": 2, "sources": 3, "cluster": 3, "embed": 4, "export": 4, "store": 4}
RANK |= {"flow": 5, "review": 5, "cli": 6}


def layer(module: str) -> str | None:
    """The subpackage of ``facesets.<layer>...``; None for the package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else None


def imports(module: str, source: str) -> list[tuple[str, int]]:
    """Every facesets module ``source`` (the text of ``module``) imports, with its line."""
    package = module.split(".")  # level 1 is the folder the file is in, for a module and an __init__ alike
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level]
            found.append((".".join(base + ([node.module] if node.module else [])), node.lineno))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("facesets"):
            found.append((str(node.module), node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names if alias.name.startswith("facesets")]
    return found


def violations(module: str, source: str) -> list[str]:
    """Imports of ``module`` that point up the order, or across to another stage of the same rank."""
    own = layer(module)
    problems = []
    for target, line in imports(module, source):
        other = layer(target)
        if own is None or other is None or other == own:
            continue
        if RANK[other] >= RANK[own]:
            problems.append(f"{module}:{line} imports {target} ({other} may not be imported from {own})")
    return problems


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        found.append((".".join(parts), path))
    return found


def test_every_module_is_in_a_stage_subpackage() -> None:
    loose = [
        name for name, _ in modules() if name.count(".") == 1 and name not in ("facesets.__init__", "facesets.__main__")
    ]
    assert loose == []
    assert {layer(name) for name, _ in modules()} - {None} == set(RANK)


def test_imports_follow_the_order_of_the_stages() -> None:
    problems = [problem for name, path in modules() for problem in violations(name, path.read_text())]
    assert problems == []


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("facesets.base.errors", "from ..models.packs import PackIdentity\n", 1),  # up the order
        ("facesets.embed.index", "from ..store.load import run_load\n", 1),  # across: embed and store rank alike
        ("facesets.cluster.identify", "from facesets.sources.galleries import list_gallery\n", 1),
        ("facesets.cli.main", "from ..embed.queue import run_embed\nfrom .options import emit\n", 0),
        ("facesets.store.load", "from ..artifacts.cache import load_cache\n", 0),
    ],
)
def test_the_order_check_finds_what_goes_against_it(module: str, source: str, expected: int) -> None:
    assert len(violations(module, source)) == expected
