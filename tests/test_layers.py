"""The architecture, enforced (docs/architecture.md): layers, no import cycles, sizes.

The analysis is ``tests/structure.py`` (``python -m tests.structure`` prints it).
"""

from __future__ import annotations

import re
from pathlib import Path

from tests import structure


def test_no_import_goes_up_a_layer() -> None:
    assert structure.upward_imports() == []


def test_no_import_cycle() -> None:
    """Not even through imports under ``TYPE_CHECKING``."""
    assert structure.cycles() == []
    assert structure.cycles(type_only=False) == []


def test_modules_and_functions_stay_within_the_size_limits() -> None:
    """Nothing over the limits, unless its docstring says why (``Why it is long:``)."""
    assert structure.oversized() == []


def test_the_checker_sees_upward_imports_cycles_and_type_only_imports(tmp_path: Path) -> None:
    """On a made-up module, so a checker that finds nothing is not taken for a clean tree."""
    src = tmp_path / "m.py"
    src.write_text(
        "from typing import TYPE_CHECKING\n"
        "import service.cli.main\n"
        "from service.nats import store\n"
        "from . import peer\n"
        "if TYPE_CHECKING:\n"
        "    from service.client.reader import LiveHub\n"
        "def f() -> None:\n"
        "    from actors import registry\n"
    )
    known = dict.fromkeys(
        [
            "service.cli.main",
            "service.nats.store",
            "service.nats",
            "service.nats.peer",
            "service.client.reader",
            "actors.registry",
        ],
        src,
    )
    got = {(i.target, i.type_only) for i in structure.imports("service.nats.m", src, known)}
    assert got == {
        ("service.cli.main", False),
        ("service.nats.store", False),
        ("service.nats.peer", False),
        ("service.client.reader", True),
        ("actors.registry", False),
    }
    assert structure.layer("service.cli.main") > structure.layer("service.nats.m")  # type: ignore[operator]
    assert structure.layer("schemas.content.js") == 1
    assert structure.layer("elsewhere") is None
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert structure.strongly_connected(graph) == [["a", "b", "c"]]


def test_every_file_the_architecture_docs_name_exists() -> None:
    """docs/architecture.md and the README's code map name files; each must be there, so the
    map cannot drift from the layout."""
    missing = []
    for doc in ("docs/architecture.md", "README.md"):
        text = (structure.ROOT / doc).read_text()
        for path in set(
            re.findall(r"`((?:schemas|actors|service|tests|bench|docs)/[\w/.]+)`", text)
        ):
            if not (structure.ROOT / path.rstrip("/")).exists():
                missing.append(f"{doc}: {path}")
    assert missing == []
