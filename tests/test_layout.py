"""The package's layout: imports run one way, down (docs/architecture.md).

commands -> runner -> source, delivery -> state -> the small shared modules at the top of the
package. Lazy imports inside functions count too: a command loaded late is still a command.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator, Tuple

PACKAGE = Path(__file__).resolve().parent.parent / "plugin" / "kata_events"

#: The layer of each part; a module may import only parts of a lower layer, or its own part.
ENTRY, COMMANDS, RUNNER, FLOW, STATE, SHARED = 5, 4, 3, 2, 1, 0
PARTS = {
    "entry": ENTRY,
    "commands": COMMANDS,
    "runner": RUNNER,
    "source": FLOW,
    "delivery": FLOW,
    "state": STATE,
}


#: Top-level modules that are not shared ones: the entry point, and the runner's own modules.
TOP_MODULES = {"cli": "entry", "__main__": "entry", "failures": "runner", "stats": "runner"}


def part_of(module: str) -> str:
    """``kata_events.delivery.acks`` -> ``delivery``; ``kata_events.cli`` -> ``entry``; the other
    top-level modules -> ``shared``."""
    parts = module.split(".")
    name = parts[1] if len(parts) > 1 else "__init__"
    name = TOP_MODULES.get(name, name)
    return name if name in PARTS or name == "emulator" else "shared"


def layer(part: str) -> int:
    return PARTS.get(part, SHARED)


def module_name(path: Path, root: Path = PACKAGE) -> str:
    relative = path.relative_to(root.parent).with_suffix("")
    names = list(relative.parts)
    if names[-1] == "__init__":
        names.pop()
    return ".".join(names)


def imports(path: Path, root: Path = PACKAGE) -> Iterator[Tuple[int, str]]:
    """(line, imported module) for every import of a kata_events module in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("kata_events"):
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base])
            if not base.startswith("kata_events"):
                continue
            for alias in node.names:
                # `from kata_events import certs` imports a module; `from x import Name` imports x.
                sub = f"{base}.{alias.name}"
                as_path = root.parent / sub.replace(".", "/")
                is_module = as_path.with_suffix(".py").exists() or as_path.is_dir()
                yield node.lineno, sub if is_module else base


def violations(root: Path = PACKAGE) -> Iterator[str]:
    for path in sorted(root.rglob("*.py")):
        here = part_of(module_name(path, root))
        for line, imported in imports(path, root):
            there = part_of(imported)
            where = f"{path.relative_to(root.parent)}:{line} imports {imported}"
            if here == "emulator":
                if there != "emulator" and layer(there) != SHARED:
                    yield f"{where}: the emulator may use only the shared modules"
                continue
            if there == "emulator":
                if here != "commands":
                    yield f"{where}: only a command (demo) may start the emulator"
                continue
            if there == here or there == "__init__":
                continue
            if layer(there) >= layer(here):
                yield f"{where}: imports run one way (commands, runner, source+delivery, state, shared)"


def test_imports_run_one_way_down() -> None:
    found = list(violations())
    assert not found, "\n".join(found)


def test_the_rule_reports_the_core_importing_a_command(tmp_path: Path) -> None:
    package = tmp_path / "kata_events"
    for name in ("commands/run.py", "delivery/policies.py", "state/store.py", "options.py"):
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text("")
    (package / "delivery" / "policies.py").write_text(
        "from kata_events.state.store import TokenStore\n"
        "def later():\n    from kata_events.commands import run\n"
    )
    (package / "state" / "store.py").write_text("from kata_events import options\n")
    found = list(violations(package))
    assert len(found) == 1 and "delivery/policies.py:3 imports kata_events.commands.run" in found[0], found


def test_the_top_of_the_package_holds_at_most_twenty_files() -> None:
    top = [p.name for p in PACKAGE.iterdir() if p.is_file() and p.suffix == ".py"]
    assert len(top) <= 20, sorted(top)
