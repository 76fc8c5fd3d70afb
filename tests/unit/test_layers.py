"""The house rules, read from the source: which layer may import which, makers and
trainers independent of each other, each technology in its own room, and concrete
backends built only by the shell (``carls/``) and the benchmarks (``benches/``). A change
that breaks one fails here (and so in ``.ci/run``), naming the file and the import."""

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
    "cassandra": {"bank", "infra", "benches"},
    "kafka": {"streams", "infra", "benches"},
    "aiokafka": {"streams", "benches"},
    "faust": {"streams", "benches"},
    "mode": {"streams", "benches"},
}
"""Third-party clients of a technology and the layers that may import them (``benches``:
the benchmarks, which measure carls against the raw clients; the shell uses none)."""
BACKEND_MODULES = {"carls.bank.cassandra", "carls.bank.kv", "carls.bank.session"}
BUILDERS = {"bank", "carls", "benches"}
"""Who may import a Cassandra backend (a ``Cassandra*`` class or the modules above): the
makers and trainers receive theirs from the shell, typed by the bank's protocols."""
SHELL_USERS = {"trainers/examples/digits_cnn.py", "trainers/__init__.py"}


def sources(root: Path) -> list[Path]:
    return sorted(
        p for layer in (*LAYERS, "carls", "benches") for p in (root / layer).rglob("*.py")
    )


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """Every module ``path`` imports (at any depth: lazy imports count), with its line and
    the names taken from it."""
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module, [a.name for a in node.names]))
    return out


def violations(root: Path = ROOT) -> list[str]:
    found = []
    for path in sources(root):
        rel = path.relative_to(root).as_posix()
        layer = rel.split("/")[0]
        for line, module, names in imports(path):
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
            if room is not None and layer not in room:
                found.append(f"{where} ({parts[0]} belongs in {sorted(room)})")
            backend = module in BACKEND_MODULES or (
                module.startswith("carls.bank") and any(n.startswith("Cassandra") for n in names)
            )
            if backend and layer not in BUILDERS:
                found.append(f"{where} (concrete backends are built by {sorted(BUILDERS)})")
    return found


def test_every_import_keeps_to_the_house_rules() -> None:
    assert violations() == []


def test_a_broken_rule_is_caught(tmp_path: Path) -> None:
    (tmp_path / "trainers").mkdir()
    (tmp_path / "trainers" / "probe.py").write_text(
        "import cassandra\nfrom carls.makers import worker\n\n\ndef f():\n    import faust\n"
        "    from carls.bank.jobs import CassandraJobStore\n    import carls.benches\n"
    )
    found = violations(tmp_path)
    assert any("trainers/probe.py:1: import cassandra" in f for f in found)
    assert any("trainers/probe.py:2: import carls.makers" in f for f in found)
    assert any("trainers/probe.py:6: import faust" in f for f in found)  # lazy ones too
    assert any("trainers/probe.py:7: import carls.bank.jobs (concrete" in f for f in found)
    assert any("trainers/probe.py:8: import carls.benches" in f for f in found)
