"""Lesson runner: execute lesson notebooks headless with papermill into a run folder.

`python -m tlkit lessons list`
`python -m tlkit lessons run [IDS...] --preset quick|full|auto --out DIR [-p NAME VALUE ...]`

Each lesson runs in its own process so its wall time and peak memory are its own; a failing
lesson is reported with the failing cell and the others still run.
"""
from __future__ import annotations

import argparse
import ast
import datetime as dt
import html
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .config import PRESETS, ParameterError
from .record import read_notebook_metrics

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Lesson:
    """One numbered lesson notebook."""

    id: str
    name: str
    path: Path

    @property
    def stem(self) -> str:
        return f"{self.id}_{self.name}"


@dataclass
class LessonResult:
    """What one lesson run produced."""

    lesson: str
    status: str
    wall_s: float
    peak_mb: float | None
    metrics: dict = field(default_factory=dict)
    error: str | None = None
    notebook: str | None = None
    html: str | None = None


def notebooks_dir() -> Path:
    """The lesson notebooks (`$TLKIT_NOTEBOOKS` or the repository's `notebooks/`)."""
    return Path(os.environ.get("TLKIT_NOTEBOOKS", REPO / "notebooks"))


def list_lessons(folder: Path | None = None) -> list[Lesson]:
    """Every `NN_name.ipynb` notebook, in lesson order."""
    lessons = []
    for path in sorted((folder or notebooks_dir()).glob("[0-9][0-9]_*.ipynb")):
        num, _, name = path.stem.partition("_")
        lessons.append(Lesson(num, name, path))
    return lessons


def select(ids: Sequence[str], lessons: list[Lesson]) -> list[Lesson]:
    """Lessons matching ids such as `3`, `03` or `03_lr_finder` (all when `ids` is empty)."""
    if not ids:
        return lessons
    chosen = []
    for wanted in ids:
        hits = [l for l in lessons if wanted in (l.id, l.stem, l.name) or (wanted.isdigit() and int(wanted) == int(l.id))]
        if not hits:
            raise ParameterError(f"no lesson {wanted!r}; lessons: {', '.join(l.stem for l in lessons)}")
        chosen.extend(h for h in hits if h not in chosen)
    return chosen


def notebook_parameters(path: Path) -> dict[str, Any]:
    """Names and defaults of the notebook's `parameters` cell."""
    import papermill as pm
    found = pm.inspect_notebook(str(path))
    return {name: info.get("default") for name, info in found.items()}


def parse_value(text: str) -> Any:
    """A command-line value as a Python literal where it is one (`3`, `0.5`, `None`, `[1,2]`), else a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def check_parameters(lessons: list[Lesson], params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-lesson parameters; a name no selected lesson declares is refused with the valid names."""
    declared = {l.stem: notebook_parameters(l.path) for l in lessons}
    valid = sorted({name for names in declared.values() for name in names})
    unknown = [name for name in params if name not in valid]
    if unknown:
        raise ParameterError(f"unknown parameter(s) {', '.join(map(repr, unknown))}; "
                             f"valid for the selected lessons: {', '.join(valid)}")
    return {stem: {k: v for k, v in params.items() if k in names} for stem, names in declared.items()}


def run_lessons(ids: Sequence[str] = (), preset: str = "auto", out: Path | None = None,
                params: dict[str, Any] | None = None, timeout: float | None = None,
                html_export: bool = True, echo=print) -> list[LessonResult]:
    """Execute lessons into `out` (default `runs/<timestamp>/`); writes metrics.json and index.html."""
    if preset not in PRESETS:
        raise ParameterError(f"preset={preset!r} is not one of {PRESETS}")
    lessons = select(ids, list_lessons())
    if not lessons:
        raise ParameterError(f"no lesson notebooks found in {notebooks_dir()}")
    per_lesson = check_parameters(lessons, dict(params or {}))
    out = Path(out or REPO / "runs" / dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for lesson in lessons:
        echo(f"[{lesson.stem}] running (preset={preset}) ...")
        result = execute_in_subprocess(lesson, out, {"preset": preset, **per_lesson[lesson.stem]},
                                       timeout, html_export)
        results.append(result)
        peak = f"{result.peak_mb:.0f} MB" if result.peak_mb else "?"
        echo(f"[{lesson.stem}] {result.status} in {result.wall_s:.0f} s, peak {peak}"
             + (f"\n    {result.error}" if result.error else ""))
        write_summary(out, results, preset)
    echo(f"run folder: {out}  (open {out / 'index.html'})")
    return results


def execute_in_subprocess(lesson: Lesson, out: Path, params: dict, timeout: float | None,
                          html_export: bool) -> LessonResult:
    """Run one lesson in a child process (its own peak memory), returning its result."""
    report = out / f".{lesson.stem}.result.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "tlkit.lessons", "_execute", str(lesson.path), str(out), json.dumps(params),
           str(timeout or 0), "1" if html_export else "0", str(report)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if report.exists():
        result = LessonResult(**json.loads(report.read_text()))
        report.unlink()
        return result
    tail = (proc.stderr or proc.stdout)[-2000:]
    return LessonResult(lesson.stem, "failed", time.perf_counter() - t0, None, error=f"runner crashed: {tail}")


def _execute(nb_in: str, out_dir: str, params_json: str, timeout: str, html_export: str, report: str) -> None:
    """Child-process side: papermill-execute one notebook, export HTML, report metrics and memory."""
    import resource

    import papermill as pm
    path, out = Path(nb_in), Path(out_dir)
    nb_out = out / path.name
    params = json.loads(params_json)
    t0 = time.perf_counter()
    status, error = "ok", None
    try:
        pm.execute_notebook(str(path), str(nb_out), parameters=params, cwd=str(path.parent),
                            execution_timeout=float(timeout) or None, progress_bar=False,
                            log_output=False)
    except pm.PapermillExecutionError as exc:
        status = "failed"
        error = (f"cell {exc.cell_index} of the executed notebook (In [{exc.exec_count}], "
                 f"`{_first_line(nb_out, exc.exec_count)}`): {exc.ename}: {exc.evalue}")
    except Exception as exc:  # kernel died, timeout, bad notebook
        status = "failed"
        error = f"{type(exc).__name__}: {exc}"
    wall = time.perf_counter() - t0
    peak_kb = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                  resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    metrics, html_name = {}, None
    if nb_out.exists():
        metrics = read_notebook_metrics(nb_out)
        if html_export == "1":
            html_name = export_html(nb_out)
    result = LessonResult(path.stem, status, wall, peak_kb / 1024, metrics, error, nb_out.name, html_name)
    Path(report).write_text(json.dumps(asdict(result)))


def _first_line(nb_path: Path, exec_count: int) -> str:
    """The first source line of the cell that ran as `In [exec_count]`, to point at the failing code."""
    try:
        import nbformat
        cells = nbformat.read(str(nb_path), as_version=4).cells
        source = next(c.source for c in cells if c.get("execution_count") == exec_count)
        return source.strip().splitlines()[0][:80]
    except Exception:  # the pointer is a courtesy; never fail the report over it
        return "?"


def export_html(nb_path: Path) -> str | None:
    """Write an HTML copy of an executed notebook next to it; returns its file name."""
    try:
        import nbformat
        from nbconvert import HTMLExporter
        body, _ = HTMLExporter().from_notebook_node(nbformat.read(str(nb_path), as_version=4))
    except Exception as exc:  # an export problem must not fail the lesson
        print(f"HTML export of {nb_path.name} failed: {exc}", file=sys.stderr)
        return None
    target = nb_path.with_suffix(".html")
    target.write_text(body, encoding="utf-8")
    return target.name


def write_summary(out: Path, results: list[LessonResult], preset: str) -> None:
    """metrics.json (everything) and index.html (a table a person reads)."""
    payload = {"preset": preset, "created": dt.datetime.now().isoformat(timespec="seconds"),
               "lessons": {r.lesson: asdict(r) for r in results}}
    (out / "metrics.json").write_text(json.dumps(payload, indent=2))
    rows = []
    for r in results:
        link = f'<a href="{html.escape(r.html)}">{html.escape(r.lesson)}</a>' if r.html else html.escape(r.lesson)
        scalars = {k: v for k, v in r.metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(scalars.items())[:8])
        colour = "#e6f4ea" if r.status == "ok" else "#fce8e6"
        peak = f"{r.peak_mb:.0f}" if r.peak_mb else "?"
        err = f"<br><small>{html.escape(r.error)}</small>" if r.error else ""
        rows.append(f'<tr style="background:{colour}"><td>{link}</td><td>{r.status}{err}</td>'
                    f"<td>{r.wall_s:.0f}</td><td>{peak}</td><td>{html.escape(shown)}</td></tr>")
    (out / "index.html").write_text(
        "<!doctype html><meta charset='utf-8'><title>tlkit run</title>"
        "<style>body{font-family:sans-serif}td,th{padding:4px 10px;border-bottom:1px solid #ddd;"
        "text-align:left;vertical-align:top}</style>"
        f"<h1>tlkit lessons — preset {html.escape(preset)}</h1><p>{payload['created']}</p>"
        "<table><tr><th>lesson</th><th>status</th><th>wall time (s)</th><th>peak memory (MB)</th>"
        f"<th>key metrics</th></tr>{''.join(rows)}</table>", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `lessons list` and `lessons run`."""
    parser = argparse.ArgumentParser(prog="python -m tlkit", description="tlkit lesson runner")
    sub = parser.add_subparsers(dest="area", required=True)
    lessons = sub.add_parser("lessons", help="list or run lesson notebooks")
    verbs = lessons.add_subparsers(dest="verb", required=True)
    verbs.add_parser("list", help="list the lessons and their parameters")
    run = verbs.add_parser("run", help="execute lessons headless into a run folder")
    run.add_argument("ids", nargs="*", help="lesson ids (e.g. 0 3 or 03_lr_finder); default: all")
    run.add_argument("--preset", default="auto", choices=PRESETS)
    run.add_argument("--out", type=Path, default=None, help="run folder (default runs/<timestamp>)")
    run.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="set a notebook parameter, e.g. -p dataset dtd10")
    run.add_argument("--timeout", type=float, default=None, help="seconds allowed per cell")
    run.add_argument("--no-html", action="store_true", help="skip the HTML export")
    args = parser.parse_args(argv)
    if args.verb == "list":
        for lesson in list_lessons():
            names = ", ".join(f"{k}={v}" for k, v in notebook_parameters(lesson.path).items())
            print(f"{lesson.id}  {lesson.name:28s} {names}")
        return 0
    try:
        results = run_lessons(args.ids, args.preset, args.out, {k: parse_value(v) for k, v in args.param},
                              args.timeout, not args.no_html)
    except ParameterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = [r.lesson for r in results if r.status != "ok"]
    if failed:
        print(f"{len(failed)} lesson(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_execute":
        _execute(*sys.argv[2:8])
    else:
        sys.exit(main())
