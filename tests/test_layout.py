"""The package's house rules, read from the source: imports run downward through the stages,
domain types come from one place, and nothing outside the web edge imports a web module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "goipd"

# Lowest first: a module may import from its own layer's packages and from lower layers only.
LAYERS: list[set[str]] = [
    {"model", "problem"},
    {"config"},
    {"runtime", "upstream"},
    {"ledger", "metrics"},
    {"fleet"},
    {"reports", "inbound", "callbacks"},
    {"dispatch", "clouds", "accept"},
    {"web"},
    {"app"},
    {"cli", "sim", "__main__"},
]
LEVEL = {name: index for index, layer in enumerate(LAYERS) for name in layer}
DOMAIN_TYPES = {"State", "Recipient", "Outcome", "Message", "NewMessage", "Claim", "LedgerError"}


def _unit(path: Path) -> str:
    """The top-level part of goipd a file belongs to: its folder, or its module at the root."""
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, names, line) of every `goipd` import in the file, function-level ones too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "goipd" or node.module.startswith("goipd."):
                found.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found.extend(
                (a.name, [], node.lineno) for a in node.names if a.name.startswith("goipd.")
            )
    return found


def _target(module: str, names: list[str]) -> list[str]:
    parts = module.split(".")
    if len(parts) > 1:
        return [parts[1]]
    return names  # `from goipd import x`: x is the unit (or __version__, from the root)


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_unit_has_a_layer() -> None:
    units = {_unit(p) for p in SOURCES}
    assert units <= set(LEVEL), f"place these in LAYERS: {sorted(units - set(LEVEL))}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_downward(path: Path) -> None:
    own = LEVEL[_unit(path)]
    upward = [
        f"line {line}: {module} ({target})"
        for module, names, line in _imports(path)
        for target in _target(module, names)
        if target in LEVEL and LEVEL[target] > own
    ]
    assert not upward, f"{path.relative_to(PACKAGE)} imports a higher layer: {upward}"


def test_no_web_module_is_imported_outside_the_web_edge() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)}:{line}"
        for path in SOURCES
        if _unit(path) not in {"web", "app"}
        for module, names, line in _imports(path)
        if module.startswith("goipd.web") or (module == "goipd" and "web" in names)
    ]
    assert not offenders


def test_domain_types_come_from_the_model_only() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)}:{line} {module}"
        for path in SOURCES
        for module, names, line in _imports(path)
        if module != "goipd.model" and DOMAIN_TYPES & set(names)
    ]
    assert not offenders


def test_the_model_imports_nothing_of_goipd() -> None:
    assert _imports(PACKAGE / "model.py") == []


def test_every_folder_says_what_it_owns_in_one_docstring() -> None:
    for folder in sorted(p for p in PACKAGE.iterdir() if (p / "__init__.py").exists()):
        tree = ast.parse((folder / "__init__.py").read_text(encoding="utf-8"))
        assert ast.get_docstring(tree), f"{folder.name}/__init__.py has no docstring"
