"""Dependencies point one way: scoring, pictures, predictions, data and models never import
training (STYLE.md, Layout). Read from the source with `ast`, so imports inside functions count."""

import ast
from pathlib import Path

import pytest

import nowcast

PACKAGE = Path(nowcast.__file__).parent
NOT_TRAINING = [
    "evaluation.py",
    "forecast.py",
    "pictures.py",
    "prediction.py",
    "checkpoints.py",
    *(path.relative_to(PACKAGE).as_posix() for path in sorted(PACKAGE.glob("data/*.py"))),
    *(path.relative_to(PACKAGE).as_posix() for path in sorted(PACKAGE.glob("model/*.py"))),
]


def imported_modules(source: str, package: str) -> set[str]:
    """Every module that `source` (a module of `package`) imports, and every name it imports
    from one, as dotted names."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            # `from . import x`, `from ..data import x`: relative to the module's package.
            parts = package.split(".")
            base = parts[: len(parts) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("module", NOT_TRAINING)
def test_does_not_import_training(module):
    path = PACKAGE / module
    package = ".".join(["nowcast", *path.relative_to(PACKAGE).parent.parts])
    assert "nowcast.training" not in imported_modules(path.read_text(), package)


@pytest.mark.parametrize(
    "source, package",
    [
        ("def f():\n    from nowcast.training import train\n", "nowcast"),
        ("import nowcast.training as t\n", "nowcast"),
        ("from nowcast import training\n", "nowcast"),
        ("from . import training\n", "nowcast"),
        ("from ..training import train\n", "nowcast.data"),
    ],
)
def test_every_form_of_import_is_seen(source, package):
    assert "nowcast.training" in imported_modules(source, package)
