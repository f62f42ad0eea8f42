"""Project hygiene: pins agree everywhere, notebooks are committed clean, CI calls the test command."""
import re
import tomllib
from pathlib import Path

import pytest

from tlkit.cli import list_lessons
from tlkit.notebook_hygiene import problems

REPO = Path(__file__).resolve().parent.parent


def pins(lines):
    found = {}
    for line in lines:
        m = re.match(r"^\s*-?\s*([A-Za-z0-9_.\-]+)==([^\s;#]+)", line)
        if m:
            found[m.group(1).lower().replace("_", "-")] = m.group(2).split("+")[0]  # 2.14.1+cpu == 2.14.1
    return found


def test_environment_files_pin_the_same_versions_as_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = pins(project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra])
    assert declared["torch"] == "2.14.1" and declared["torchvision"] == "0.29.1"
    conda = pins((REPO / "environment.yml").read_text().splitlines())
    binder = pins((REPO / "binder" / "requirements.txt").read_text().splitlines())
    assert conda == declared
    assert binder == declared
    assert "+cpu" in (REPO / "binder" / "requirements.txt").read_text()  # Binder gets the small CPU-only build


@pytest.mark.parametrize("notebook", sorted((REPO / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_notebooks_are_committed_clean(notebook):
    assert problems(notebook) == []


def test_every_lesson_has_a_numbered_notebook_and_a_test():
    stems = [l.stem for l in list_lessons(REPO / "notebooks")]
    assert stems and stems[0] == "00_welcome"
    for stem in stems:
        assert (REPO / "tests" / f"test_nb_{stem}.py").exists(), f"no notebook test for {stem}"


def test_ci_runs_the_readme_test_command():
    assert "make test" in (REPO / ".ci" / "run").read_text()
    assert "make test" in (REPO / "README.md").read_text()
