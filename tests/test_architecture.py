"""The architecture the tree shows: a core, one module per lesson, imports in one direction, one home per idea."""
import ast
import importlib
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "tlkit"
LESSONS = PACKAGE / "lessons"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, name: str, is_package: bool = False) -> set[str]:
    """Every tlkit module `source` (module `name`) imports, relative imports resolved (`from .. import x` is tlkit.x)."""
    package = name if is_package else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("tlkit"))
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) \
                if node.level else node.module or ""
            if base.startswith("tlkit"):
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names
                             if (REPO / f"{base}.{a.name}".replace(".", "/")).with_suffix(".py").exists())
    return found


def tlkit_imports(path: Path) -> set[str]:
    return imports_of(path.read_text(), module_name(path), path.name == "__init__.py")


def is_lesson(module: str) -> bool:
    return module.startswith("tlkit.lessons.")


CORE = sorted(p for p in PACKAGE.rglob("*.py") if not is_lesson(module_name(p)))
LESSON_MODULES = sorted(LESSONS.glob("l[0-9][0-9]_*.py"))


def test_the_layout_has_a_core_and_one_module_per_lesson():
    notebooks = sorted(p.name[:2] for p in (REPO / "notebooks").glob("0[1-9]_*.ipynb"))
    assert [p.name[1:3] for p in LESSON_MODULES] == notebooks
    assert {"config", "env", "record", "data", "models", "optim", "train", "schedules", "lr_finder", "features",
            "tta", "ensembles", "plots", "metrics", "claims", "cli"} <= {p.stem for p in PACKAGE.glob("*.py")}


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(REPO)))
def test_the_core_never_imports_a_lesson(path):
    assert not [m for m in tlkit_imports(path) if is_lesson(m)]


@pytest.mark.parametrize("path", LESSON_MODULES, ids=lambda p: p.name)
def test_a_lesson_imports_only_the_core(path):
    others = [m for m in tlkit_imports(path) if is_lesson(m) and m != module_name(path)]
    assert others == [], f"{path.name} imports another lesson: {others}"


def test_the_import_check_sees_relative_and_absolute_imports():
    source = "from . import l01_transfer\nfrom ..tta import merge\nimport tlkit.lessons.l02_augment\n"
    found = imports_of(source, "tlkit.lessons.l99_probe")
    assert {"tlkit.lessons.l01_transfer", "tlkit.tta", "tlkit.lessons.l02_augment"} <= found
    assert "tlkit.tta.merge" not in found   # a function, not a module


@pytest.mark.parametrize("path", LESSON_MODULES, ids=lambda p: p.name)
def test_each_lesson_module_names_its_notebook_and_the_notebook_imports_it(path):
    (notebook,) = (REPO / "notebooks").glob(f"{path.name[1:3]}_*.ipynb")
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert f"notebooks/{notebook.name}" in doc
    cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
    first = next("".join(c["source"]) for c in cells if "parameters" not in c["metadata"].get("tags", []))
    assert re.search(rf"from tlkit\.lessons(?: import |\.){path.stem}\b", first), \
        f"{notebook.name}'s first code cell after its parameters does not import tlkit.lessons.{path.stem}"


MODULES = sorted(module_name(p) for p in PACKAGE.rglob("*.py") if p.name not in ("__main__.py", "__init__.py"))


@pytest.mark.parametrize("name", MODULES)
def test_every_module_lists_its_public_names(name):
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    assert [n for n in module.__all__ if not hasattr(module, n)] == []
    tree = ast.parse(Path(module.__file__).read_text())
    public = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))
              and not node.name.startswith("_")}
    assert sorted(public - set(module.__all__)) == []


def notebook_uses() -> set[tuple[str, str]]:
    """(module, name) for every `alias.name` and `from tlkit.x import name` in the lesson notebooks."""
    uses = set()
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        code = "\n".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code")
        aliases = {"tlkit": "tlkit"}
        for m in re.finditer(r"from (tlkit[\w.]*) import (\([^)]*\)|[^\n]+)", code):
            for item in m.group(2).strip("()").split(","):
                parts = item.split(" as ")
                if not parts[0].strip():
                    continue
                full = f"{m.group(1)}.{parts[0].strip()}"
                if importlib.util.find_spec(full.rsplit(".", 1)[0]) and _is_module(full):
                    aliases[parts[-1].strip()] = full
                else:
                    uses.add((m.group(1), parts[0].strip()))
        for alias, module in aliases.items():
            for m in re.finditer(rf"(?<![\w.]){alias}\.([A-Za-z_]\w*)\b(?!\.)", code):
                if not _is_module(f"{module}.{m.group(1)}"):
                    uses.add((module, m.group(1)))
    return uses


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def test_what_the_notebooks_call_is_public():
    uses = notebook_uses()
    assert ("tlkit.lessons.l01_transfer", "frozen_head") in uses and ("tlkit.claims", "report") in uses
    missing = sorted(f"{module}.{name}" for module, name in uses
                     if module != "tlkit" and name not in getattr(importlib.import_module(module), "__all__", ()))
    assert missing == []


def test_the_core_api_document_names_only_what_exists():
    text = (REPO / "docs" / "CORE_API.md").read_text()
    named = set(re.findall(r"`(?:tlkit\.)?([a-z_]+)\.([A-Za-z_]\w*)", text))
    named = {(m, n) for m, n in named if (PACKAGE / f"{m}.py").exists() and n not in ("py", "json")}
    assert len(named) >= 8
    stale = sorted(f"{m}.{n}" for m, n in named if not hasattr(importlib.import_module(f"tlkit.{m}"), n))
    assert stale == []


def test_the_crop_fraction_has_one_definition():
    hits = [f"{p.relative_to(REPO)}:{i}" for p in [*PACKAGE.rglob("*.py"), *(REPO / "notebooks").glob("*.ipynb")]
            for i, line in enumerate(p.read_text().splitlines(), 1) if "0.875" in line]
    assert hits == ["tlkit/data.py:" + hits[0].split(":")[1]] and len(hits) == 1


def test_the_module_map_is_current():
    from tlkit.cli import modules_markdown
    assert (REPO / "docs" / "MODULES.md").read_text() == modules_markdown(), \
        "docs/MODULES.md is stale: python -m tlkit modules > docs/MODULES.md"


def test_the_cli_prints_the_module_map(capsys):
    from tlkit.cli import main
    assert main(["modules"]) == 0
    assert capsys.readouterr().out == (REPO / "docs" / "MODULES.md").read_text()
