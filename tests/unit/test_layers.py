"""The layering holds: the admin server and the dashboard reach the bridge through the
operations only, nothing imports the service but its entry points, and the simulator, the
demo and the fake clock stay off the service's import path."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

BRIDGE = Path(__file__).resolve().parents[2] / "bridge"
FACES = ("admin", "ui", "ops")  # the API, the dashboard, the operations they call
# what a face must not reach around the operations for
BELOW = (
    "bridge.service",
    "bridge.cli",
    "bridge.deliver.dispatcher",
    "bridge.detect",
    "bridge.store.sqlite",
    "bridge.store.pg",
    "bridge.sim",
)


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_the_faces_reach_the_bridge_through_the_operations_only() -> None:
    offenders = {
        f"{path.relative_to(BRIDGE.parent)} imports {name}"
        for face in FACES
        for path in (BRIDGE / face).rglob("*.py")
        for name in imports(path)
        if any(name == below or name.startswith(below + ".") for below in BELOW)
    }
    assert offenders == set()


def test_only_the_entry_points_import_the_service() -> None:
    importers = {
        str(path.relative_to(BRIDGE))
        for path in BRIDGE.rglob("*.py")
        if any(n == "bridge.service" or n.startswith("bridge.service.") for n in imports(path))
    }
    assert importers <= {"cli.py", "sim/demo.py"}
    assert "cli.py" in importers


def test_the_service_runs_without_the_simulator_or_the_fake_clock() -> None:
    code = (
        "import sys, bridge.cli, bridge.service, bridge.admin.app, bridge.ui\n"
        "print(sorted(m for m in sys.modules if m.startswith('bridge.sim')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
    assert (BRIDGE / "sim" / "simulator.py").is_file()  # still shipped for `simulate`
