"""The README's module map matches the package: every module is on it, a module imports (at the top
or inside a function) only from its own floor and the floors below, and no modules import each other
in a circle."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lightreasoner"


def floors() -> dict[str, int]:
    """Module -> floor (0 is the ground) from the README's module map table (names in parentheses
    are notes, not modules)."""
    text = ROOT.joinpath("README.md").read_text()
    lines = text[text.index("## Module map"):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| floor"))
    rows = []
    for line in lines[start + 2:]:  # past the header and its rule, to the table's end
        if not line.startswith("|"):
            break
        rows.append(line)
    listed = [(re.findall(r"`([a-z_]+)/?`", re.sub(r"\([^)]*\)", "", row.split("|")[2])), floor)
              for floor, row in enumerate(rows)]
    names = [name for row, _ in listed for name in row]
    assert len(names) == len(set(names)), "a module is listed twice in the README's module map"
    return {name: floor for row, floor in listed for name in row}


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package module) of every relative import in ``path``."""
    package = list(path.relative_to(PACKAGE).parent.parts)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)]
            names = [node.module] if node.module else [alias.name for alias in node.names]
            found += [(node.lineno, (base + name.split("."))[0]) for name in names]
    return found


def test_every_module_is_on_the_map():
    on_map = floors()
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"} | {"commands"}
    assert modules - set(on_map) == set(), "modules missing from the README's module map"
    assert set(on_map) - modules == set(), "the README's module map names modules that do not exist"


def test_imports_go_down_the_floors_only():
    floor = floors()
    assert len(floor) > 20  # the map was read
    upward = []
    for path in PACKAGE.rglob("*.py"):
        module = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if module == "__init__":
            continue
        upward += [f"{path.relative_to(ROOT)}:{line} {module} -> {target}" for line, target in imports(path)
                   if target in floor and floor[target] > floor[module]]
    assert upward == []


def import_graph() -> dict[str, set[str]]:
    """Top-level module -> the package's modules it imports (at the top or inside a function)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        module = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        targets = {target for _, target in imports(path)} - {module, "__init__"}
        graph.setdefault(module, set()).update(targets)
    return graph


def test_no_import_circles():
    graph = import_graph()
    assert {"pipeline", "sft", "arms"} <= graph.keys() and "arms" in graph["sft"]  # the graph was read

    def circle_from(start: str) -> list[str] | None:
        """A path of imports from ``start`` back to itself, if there is one (depth first)."""
        stack, seen = [(start, [start])], set()
        while stack:
            module, path = stack.pop()
            for target in sorted(graph.get(module, ())):
                if target == start:
                    return path + [start]
                if target not in seen:
                    seen.add(target)
                    stack.append((target, path + [target]))
        return None

    circles = [" -> ".join(circle) for module in sorted(graph) if (circle := circle_from(module))]
    assert circles == []
