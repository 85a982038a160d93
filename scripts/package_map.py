"""The package's shape, for a maintainer and for review: rooms (packages), modules over 400 lines, functions over 60,
the internal import graph's floors (a module's floor is one more than the highest floor it imports; modules that
import nothing of the package are floor 1) and circles.

    python scripts/package_map.py [--root pdl_plugin] [--top_level] [--json FILE]

Imports inside functions count (they are arrows too, only deferred) unless `--top_level`; `TYPE_CHECKING` imports
never do.
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(path: Path, name: str, modules: set[str], top_level: bool = False) -> set[str]:
    """The package modules `path` imports (relative and absolute, not under `if TYPE_CHECKING`; with `top_level`,
    not inside functions either)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    skip = lambda block: _type_checking_block(block) or (  # noqa: E731
        top_level and isinstance(block, (ast.FunctionDef, ast.AsyncFunctionDef)))
    skipped = {id(n) for block in ast.walk(tree) if skip(block) for n in ast.walk(block) if n is not block}
    for node in ast.walk(tree):
        if id(node) in skipped or not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            stem = ".".join([*base, node.module] if node.module else base)
            targets = [stem, *(f"{stem}.{alias.name}" for alias in node.names)]
        for target in targets:
            while target and target not in modules:
                target = target.rsplit(".", 1)[0] if "." in target else ""
            if target and target != name:
                found.add(target)
    return found


def floors(graph: dict[str, set[str]]) -> tuple[dict[str, int], list[list[str]]]:
    """Each module's floor, and the circles found (a module in a circle is given the floor it reaches)."""
    floor: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> int:
        if node in floor:
            return floor[node]
        if node in path:
            circles.append(path[path.index(node):] + [node])
            return 0
        below = [visit(child, [*path, node]) for child in graph[node]]
        floor[node] = 1 + max(below, default=0)
        return floor[node]

    for node in sorted(graph):
        visit(node, [])
    return floor, circles


def package_map(root: Path, top_level: bool = False) -> dict:
    paths = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph = {name: imports_of(path, name, set(paths), top_level) for name, path in paths.items()}
    floor, circles = floors(graph)
    functions = []
    for name, path in paths.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                functions.append((node.end_lineno - node.lineno + 1, f"{name}.{node.name}"))
    lines = {name: len(path.read_text().splitlines()) for name, path in paths.items()}
    rooms = sorted({name.rsplit(".", 1)[0] if paths[name].name != "__init__.py" else name for name in paths})
    return {
        "modules": len(paths), "lines": sum(lines.values()), "rooms": rooms, "floors": max(floor.values()),
        "over_400_lines": sorted(((n, m) for m, n in lines.items() if n > 400), reverse=True),
        "functions_over_60_lines": sorted(functions, reverse=True), "circles": circles,
        "floor_of": dict(sorted(floor.items(), key=lambda kv: (-kv[1], kv[0]))), "lines_of": lines,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent / "pdl_plugin")
    parser.add_argument("--top_level", action="store_true", help="count only imports at module level")
    parser.add_argument("--json", type=Path, default=None)
    options = parser.parse_args(argv)
    shape = package_map(options.root, options.top_level)
    print(f"{shape['lines']:,} lines in {shape['modules']} modules, {len(shape['rooms'])} rooms, "
          f"{shape['floors']} floors, {len(shape['circles'])} circles")
    print("modules over 400 lines:", ", ".join(f"{m} {n}" for n, m in shape["over_400_lines"]) or "none")
    print("functions over 60 lines:", ", ".join(f"{f} {n}" for n, f in shape["functions_over_60_lines"]) or "none")
    for circle in shape["circles"][:5]:
        print("circle:", " -> ".join(circle))
    top = [f"{m} ({f})" for m, f in list(shape["floor_of"].items())[:6]]
    print("highest floors:", ", ".join(top))
    if options.json:
        options.json.write_text(json.dumps(shape, indent=1) + "\n")


if __name__ == "__main__":
    main()
