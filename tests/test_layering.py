"""Dependencies point one way (STYLE.md, Layout): each command's module (training, evaluation,
plotting, prediction) is imported by the command line alone; what the commands share (the run,
reports, drawing, units, io, sharding) and data and models never import a command's module; and
the modules that must load before TensorFlow, or without Hydra, import neither. Read from the
source with `ast`, so imports inside functions count."""

import ast
from pathlib import Path

import pytest

import nowcast

PACKAGE = Path(nowcast.__file__).parent
COMMANDS = ["nowcast.training", "nowcast.evaluation", "nowcast.plotting", "nowcast.prediction"]
SHARED = [
    "run.py",
    "reports.py",
    "drawing.py",
    "units.py",
    "io.py",
    "sharding.py",
    "checkpoints.py",
    "baselines.py",
    "metrics.py",
    "losses.py",
]
NOT_TRAINING = [
    "evaluation.py",
    "plotting.py",
    "prediction.py",
    *SHARED,
    *(path.relative_to(PACKAGE).as_posix() for path in sorted(PACKAGE.glob("data/*.py"))),
    *(path.relative_to(PACKAGE).as_posix() for path in sorted(PACKAGE.glob("model/*.py"))),
]


# Modules and what they must not import, and why.
FORBIDDEN = {
    # The command line checks shard= before TensorFlow loads.
    "sharding.py": ("keras", "tensorflow", "jax", "hydra"),
    # Pure drawing: arrays in, files out.
    "drawing.py": ("keras", "tensorflow", "jax", "hydra", "omegaconf"),
    "io.py": ("keras", "tensorflow", "jax", "hydra", "omegaconf"),
    # Scores from keras.ops and NumPy, whatever the training setup.
    "metrics.py": ("tensorflow", "hydra", "omegaconf", "nowcast.config", "nowcast.losses"),
}


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


def package_modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def imports_of(path: Path) -> set[str]:
    package = ".".join(["nowcast", *path.relative_to(PACKAGE).parent.parts])
    return imported_modules(path.read_text(), package)


def under(name: str, module: str) -> bool:
    return name == module or name.startswith(f"{module}.")


@pytest.mark.parametrize("command", COMMANDS)
def test_a_commands_module_is_imported_by_the_command_line_alone(command):
    importers = [
        path.relative_to(PACKAGE).as_posix()
        for path in package_modules()
        if any(under(name, command) for name in imports_of(path))
        and f"nowcast.{path.stem}" != command
    ]
    assert importers == ["cli.py"]


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_modules_that_load_early_or_draw_import_no_framework(module):
    imported = imports_of(PACKAGE / module)
    assert not [name for name in imported if any(under(name, f) for f in FORBIDDEN[module])]


@pytest.mark.parametrize(
    "module",
    [p.relative_to(PACKAGE).as_posix() for p in sorted(PACKAGE.glob("data/*.py"))]
    + [p.relative_to(PACKAGE).as_posix() for p in sorted(PACKAGE.glob("model/*.py"))],
)
def test_data_and_models_import_nothing_that_reads_a_run(module):
    above = (*COMMANDS, "nowcast.run", "nowcast.reports", "nowcast.cli", "nowcast.sharding")
    imported = imports_of(PACKAGE / module)
    assert not [name for name in imported if any(under(name, m) for m in above)]


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
