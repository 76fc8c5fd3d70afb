"""The house rules, read from the source: which layer may import which, makers and
trainers independent of each other, and each technology in its own room. A change that
breaks one fails here (and so in ``.ci/run``), naming the file and the import."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("schemas", "streams", "bank", "infra", "makers", "trainers")
MAY_IMPORT: dict[str, set[str]] = {
    "schemas": set(),
    "streams": {"schemas"},
    "bank": {"schemas"},
    "infra": set(),
    "makers": {"schemas", "streams", "bank"},
    "trainers": {"schemas", "streams", "bank"},
}
"""Our layers each may import besides itself (``carls`` itself: the shell, only in the
trainers' docs and examples, see ``SHELL_USERS``)."""
ROOMS: dict[str, set[str]] = {
    "cassandra": {"bank", "infra"},
    "kafka": {"streams", "infra", "carls"},
    "aiokafka": {"streams"},
    "faust": {"streams"},
    "mode": {"streams"},
}
"""Third-party clients of a technology and the layers (``carls``: the shell) that may
import them."""
BENCHES = {"makers/bench.py", "makers/bench_raw.py", "makers/bench_faust.py"}
"""Benchmarks that drive Kafka clients directly to measure them against carls; they move
to a package of their own (the house issue), until then they are the one exception."""
SHELL_USERS = {"trainers/examples/digits_cnn.py", "trainers/__init__.py"}


def sources(root: Path) -> list[Path]:
    return sorted(p for layer in (*LAYERS, "carls") for p in (root / layer).rglob("*.py"))


def imports(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports (at any depth: lazy imports count), with its line."""
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def violations(root: Path = ROOT) -> list[str]:
    found = []
    for path in sources(root):
        rel = path.relative_to(root).as_posix()
        layer = rel.split("/")[0]
        for line, module in imports(path):
            parts = module.split(".")
            where = f"{rel}:{line}: import {module}"
            if parts[0] == "carls" and layer in MAY_IMPORT:
                target = parts[1] if len(parts) > 1 else "carls"
                if target == "carls" or target in ("settings", "cli", "wiring", "client"):
                    if rel not in SHELL_USERS:
                        found.append(f"{where} (the {layer} layer may not use the shell)")
                elif target != layer and target not in MAY_IMPORT[layer]:
                    found.append(f"{where} ({layer} may import only {MAY_IMPORT[layer]})")
            room = ROOMS.get(parts[0])
            if room is not None and layer not in room and rel not in BENCHES:
                found.append(f"{where} ({parts[0]} belongs in {sorted(room)})")
    return found


def test_every_import_keeps_to_the_house_rules() -> None:
    assert violations() == []


def test_a_broken_rule_is_caught(tmp_path: Path) -> None:
    (tmp_path / "trainers").mkdir()
    (tmp_path / "trainers" / "probe.py").write_text(
        "import cassandra\nfrom carls.makers import worker\n\n\ndef f():\n    import faust\n"
    )
    found = violations(tmp_path)
    assert any("trainers/probe.py:1: import cassandra" in f for f in found)
    assert any("trainers/probe.py:2: import carls.makers" in f for f in found)
    assert any("trainers/probe.py:6: import faust" in f for f in found)  # lazy ones too
