"""The shape of the package: stages import only earlier stages, the framework stays in
the OpenFlow shim, and response actions are named only by their own module and the registry."""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

from controller.response.actions import REGISTRY

PACKAGE = Path(__file__).resolve().parents[2] / "controller"

# Stage order: a module may import its own stage and the stages before it.
STAGES = [
    ("foundation", ("controller", "controller.config", "controller.yamlnodes", "controller.addresses")),
    ("openflow", ("controller.openflow",)),
    ("network", ("controller.network",)),
    ("telemetry", ("controller.telemetry",)),
    ("detection", ("controller.detection",)),
    ("response", ("controller.response",)),
    ("api", ("controller.api",)),
    ("core", ("controller.core",)),
    ("shell", ("controller.app", "controller.api.cli", "controller.replayswitch", "controller.pcapreplay",
               "controller.connreplay")),   # the replays drive the core as app does
]
FRAMEWORKS = ("os_ken", "ryu", "eventlet")
SHIM = "controller.openflow.compat"


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def stage(name: str) -> int:
    best, rank = -1, -1
    for i, (_, prefixes) in enumerate(STAGES):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    assert rank >= 0, f"{name} belongs to no stage"
    return rank


def imports(path: Path) -> list[tuple[int, str]]:
    """Every module an import statement names (function-level imports included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names
                      if f"{node.module}.{a.name}" in modules()]
    return found


def test_every_module_belongs_to_a_stage_and_imports_no_later_stage():
    bad = []
    for name, path in modules().items():
        mine = stage(name)
        for line, target in imports(path):
            if target.split(".")[0] != "controller":
                continue
            if stage(target) > mine:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {name} ({STAGES[mine][0]}) imports "
                           f"{target} ({STAGES[stage(target)][0]})")
    assert bad == []


def test_only_the_openflow_shim_imports_the_framework():
    bad = [f"{path.relative_to(PACKAGE.parent)}:{line}: {target}"
           for name, path in modules().items() if name != SHIM
           for line, target in imports(path) if target.split(".")[0] in FRAMEWORKS]
    assert bad == []


def string_literals(path: Path) -> list[tuple[int, str]]:
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline):
        if tok.type == tokenize.STRING:
            try:
                value = ast.literal_eval(tok.string)
            except (ValueError, SyntaxError):
                continue  # an f-string
            if isinstance(value, str):
                out.append((tok.start[0], value))
    return out


def test_action_names_appear_only_in_their_module_and_the_registry():
    registry = PACKAGE / "response" / "actions" / "__init__.py"
    names = {a.name: PACKAGE / "response" / "actions" / f"{a.name}.py" for a in REGISTRY}
    assert all(p.exists() for p in names.values()), names
    bad = []
    for path in modules().values():
        for line, value in string_literals(path):
            if value in names and path not in (names[value], registry):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {value!r}")
    assert bad == []


def test_the_grep_would_catch_a_stray_name(tmp_path):
    stray = tmp_path / "m.py"
    stray.write_text('x = "quarantine"\ny = f"{x}"\n', encoding="utf-8")
    assert (1, "quarantine") in string_literals(stray)
