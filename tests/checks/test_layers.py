"""The import-graph check of `make lint` (checks/layers.py) finds what it is for, and the real tree
passes it."""

from __future__ import annotations

from pathlib import Path

from checks import layers


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for folder in {p.parent for p in root.rglob("*.py")}:
        (folder / "__init__.py").touch()
    return root


def test_an_upward_import_is_found(tmp_path: Path) -> None:
    root = tree(
        tmp_path, {"app/core/errors.py": "from app.pipeline.run import x\n", "app/pipeline/run.py": "x = 1\n"}
    )
    problems = layers.violations(root)
    assert any(
        "app/core/errors.py:1: imports app.pipeline.run upward (core -> pipeline)" in p for p in problems
    )


def test_a_cycle_hidden_behind_type_checking_is_found(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "app/metering/a.py": "from app.metering import b\n",
            "app/metering/b.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from app.metering.a import A\n"
            ),
        },
    )
    assert "import cycle: app.metering.a -> app.metering.b -> app.metering.a" in layers.violations(root)


def test_relative_imports_and_sizes_are_checked(tmp_path: Path) -> None:
    long_function = "def f():\n" + "    x = 1\n" * 70
    root = tree(
        tmp_path,
        {
            "app/db/tables.py": "from ..api import routes\n",
            "app/api/routes.py": long_function + "\n" * 400,
        },
    )
    problems = layers.violations(root)
    assert any("app/db/tables.py:1: imports app.api.routes upward (db -> api)" in p for p in problems)
    assert any("app/api/routes.py:1: f() is 71 lines" in p for p in problems)
    assert any("app/api/routes.py: 471 lines" in p for p in problems)


def test_a_downward_import_is_fine(tmp_path: Path) -> None:
    root = tree(
        tmp_path, {"app/api/chat.py": "from app.core.errors import E\n", "app/core/errors.py": "E = 1\n"}
    )
    assert layers.violations(root) == []


def test_the_gateway_itself_passes() -> None:
    assert layers.violations() == []
