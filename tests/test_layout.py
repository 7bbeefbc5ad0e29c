"""The house rules of replicate/ (docs/architecture.md), read from the source with `ast`: no import
cycles (imports inside functions count too), only the allowed directions between folders, and
every package folder shipped in the wheel."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "replicate"

STAGES = {"generate", "finetune", "evaluate"}
SPINE = {"config", "errors", "files", "meter", "rundir", "tables", "prompts", "rouge", "weights", "precision", "log", "progress",
         "options", "cards", "__init__"}
# The rooms each room must not enter. A stage never imports another stage, the top (pipeline,
# sweep, cli) or the report; the cost model is pure; the report reads files and runs nothing.
TOP = {"pipeline", "sweep", "cli", "api"}
FORBIDDEN = {
    "spine": STAGES | TOP | {"cost", "engines", "report"},
    "cost": STAGES | TOP | {"engines", "report"},
    "engines": STAGES | TOP | {"cost", "report"},
    "generate": (STAGES - {"generate"}) | TOP | {"report"},
    "finetune": (STAGES - {"finetune"}) | TOP | {"report"},
    "evaluate": (STAGES - {"evaluate"}) | TOP | {"report"},
    "report": STAGES | TOP | {"engines"},
    "pipeline": {"sweep", "cli", "api"},
    "sweep": {"cli", "api"},
    "api": {"cli"},
    "cli": set(),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(name: str) -> str:
    """The module a dotted name refers to: the longest prefix that is a module or package of ours."""
    parts = name.split(".")
    while parts:
        base = ROOT.joinpath(*parts)
        if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
            return ".".join(parts)
        parts.pop()
    return "replicate"


def imports(path: Path) -> set[str]:
    """Every replicate module `path` imports, at module level or inside a function."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {resolve(a.name) for a in node.names if a.name.startswith("replicate")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("replicate"):
            out |= {resolve(f"{node.module}.{a.name}") for a in node.names}
    return out - {module_name(path)}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in PKG.rglob("*.py")}


def room(module: str) -> str:
    """The folder (cost, engines, a stage, report) or top-level module a module belongs to."""
    parts = module.split(".")
    if len(parts) == 1:
        return "spine"
    top = {"__main__": "cli"}.get(parts[1], parts[1])  # `python -m replicate` is the CLI
    return "spine" if top in SPINE else top


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(g.get(m, ())):
            # A package's __init__ importing its own submodules is how it exports its entry point.
            if n.startswith(m + "."):
                continue
            if state.get(n) == 1:
                cycle = path[path.index(n):] + [n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if state.get(n) is None:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)


def test_only_allowed_directions():
    bad = []
    for m, deps in sorted(graph().items()):
        forbidden = FORBIDDEN[room(m)]
        bad += [f"{m} -> {d}" for d in sorted(deps) if room(d) in forbidden and room(d) != room(m)]
    assert not bad, "imports against docs/architecture.md:\n" + "\n".join(bad)


def test_every_package_folder_ships_in_the_wheel():
    listed = set(re.search(r"packages = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(), re.DOTALL).group(1)
                 .replace('"', "").replace("\n", "").replace(" ", "").split(","))
    found = {module_name(p.parent / "__init__.py") for p in PKG.rglob("__init__.py")}
    assert found <= listed, f"package folders missing from pyproject.toml: {sorted(found - listed)}"
    for folder in ("budgets", "pipelines"):
        assert f"replicate.{folder}" in listed and (ROOT / folder).is_dir()


def test_the_rules_catch_a_cycle_and_a_wrong_direction(tmp_path, monkeypatch):
    """The checks above must be able to fail: a stage that imports another stage, and two
    modules that import each other through a function, are caught."""
    fake = tmp_path / "replicate"
    for sub in ("generate", "evaluate"):
        (fake / sub).mkdir(parents=True)
        (fake / sub / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "generate" / "stage.py").write_text("def f():\n    from replicate.evaluate import stage\n")
    (fake / "evaluate" / "stage.py").write_text("from replicate.generate.stage import f\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    monkeypatch.setattr(__import__(__name__), "PKG", fake)
    g = graph()
    assert g["replicate.generate.stage"] == {"replicate.evaluate.stage"}
    try:
        test_no_import_cycles()
    except AssertionError as e:
        assert "import cycle" in str(e)
    else:
        raise AssertionError("the cycle was not found")
    try:
        test_only_allowed_directions()
    except AssertionError as e:
        assert "replicate.evaluate.stage -> replicate.generate.stage" in str(e)
    else:
        raise AssertionError("the forbidden direction was not found")
