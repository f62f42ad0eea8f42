"""Lesson runner: execute lesson notebooks headless with papermill into a run folder.

`python -m tlkit lessons list [IDS...] [-v]`
`python -m tlkit lessons run [IDS...] --preset quick|full|auto --out DIR [--force] [-p NAME VALUE ...]`
`python -m tlkit bench [IDS...] [-p NAME VALUE ...] [--out DIR] [--against OLD/bench.json]`   (see tlkit.bench)

Each lesson runs in its own process so its wall time and peak memory are its own; a failing
lesson is reported with the failing cell and the others still run. SIGINT (Ctrl-C) or SIGTERM stops
the running lesson, its kernel included, marks it `interrupted` and exits with 128 + the signal.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import datetime as dt
import html
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import tokenize
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .config import PRESETS
from .errors import ParameterError
from .execute import Interrupted, signals_interrupt
from .html_export import export_html

__all__ = ["Lesson", "LessonResult", "Parameter", "check_parameters", "claims_ledger", "claims_table_html",
           "default_cell_timeout", "default_run_folder", "execute_in_subprocess", "interrupted_result",
           "list_command", "list_lessons", "main", "notebook_parameters", "notebooks_dir", "parse_parameters",
           "parse_value", "prepare_run_folder", "run_command", "run_lessons", "select",
           "stop_process_group", "write_summary", "GRACE_S", "QUICK_CELL_TIMEOUT_S", "REPO",
           "modules_markdown"]

REPO = Path(__file__).resolve().parent.parent
GRACE_S = 10.0  # seconds a stopped lesson gets to shut its kernel down before SIGKILL
QUICK_CELL_TIMEOUT_S = 600.0  # a quick-preset cell this slow has hung: the slowest takes about a minute on 2 cores


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
    cpu_s: float | None = None    # CPU seconds of the lesson's process and its kernel together


@dataclass(frozen=True)
class Parameter:
    """One assignment of a notebook's parameters cell."""

    name: str
    default: Any
    help: str


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


def notebook_parameters(path: Path) -> dict[str, Parameter]:
    """The assignments of the notebook's `parameters`-tagged cell (none when it has no such cell)."""
    import nbformat
    cells = nbformat.read(str(path), as_version=4).cells
    source = next((c.source for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])), "")
    return parse_parameters(source, f"{path.name}, parameters cell")


def parse_parameters(source: str, where: str = "parameters cell") -> dict[str, Parameter]:
    """Each top-level `name = value` of a cell, with its literal default and its trailing comment as help."""
    try:
        body = ast.parse(source).body
    except SyntaxError as exc:
        raise ParameterError(f"{where}: line {exc.lineno} is not plain Python ({exc.msg}); "
                             f"write parameters as `name = value  # help`, e.g. `seed = 0  # random seed`") from None
    comments = _comments(source)
    found = {}
    for node, after in zip(body, [n.lineno for n in body[1:]] + [len(source.splitlines()) + 1]):
        for name in _assigned_names(node):
            found[name] = Parameter(name, _default(node.value, source), _help(comments, node, after))
    return found


def _assigned_names(node: ast.stmt) -> list[str]:
    """The plain names a statement assigns a value to (`a = b = 1`, `a: int = 1`)."""
    if isinstance(node, ast.AnnAssign) and node.value is not None:
        targets = [node.target]
    else:
        targets = node.targets if isinstance(node, ast.Assign) else []
    return [t.id for t in targets if isinstance(t, ast.Name)]


def _comments(source: str) -> dict[int, tokenize.TokenInfo]:
    """The comment token of each line that has one."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return {tok.start[0]: tok for tok in tokens if tok.type == tokenize.COMMENT}


def _help(comments: dict[int, tokenize.TokenInfo], node: ast.stmt, after: int) -> str:
    """The statement's trailing comment, continued by indented comment-only lines before line `after`."""
    lines = [n for n in range(node.lineno, node.end_lineno + 1) if n in comments]
    for n in range(node.end_lineno + 1, after):
        if not (lines and n in comments and _continues(comments[n])):
            break
        lines.append(n)
    return " ".join(comments[n].string.lstrip("#").strip() for n in lines)


def _continues(comment: tokenize.TokenInfo) -> bool:
    """An indented line holding only this comment: the previous line's comment goes on."""
    return comment.start[1] > 0 and comment.line.strip() == comment.string.strip()


def _default(value: ast.expr, source: str) -> Any:
    """The value as a Python literal; an expression that is not one stays its source text."""
    try:
        return ast.literal_eval(value)
    except (ValueError, TypeError):
        return ast.get_source_segment(source, value)


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


def default_run_folder() -> Path:
    """`runs/<timestamp>/` in the repository."""
    return REPO / "runs" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def default_cell_timeout(preset: str) -> float | None:
    """Seconds allowed per cell when none is given: 600 in the quick preset ('auto' without a CUDA GPU),
    none in the full preset, whose cells may train for hours.

    Why: a kernel that hangs (it happened under heavy load) would otherwise keep a headless run waiting
    for ever; a stated limit turns it into a failed lesson with a message.
    """
    import torch
    from .config import resolve_preset
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return QUICK_CELL_TIMEOUT_S if resolve_preset(preset, device) == "quick" else None


def run_lessons(ids: Sequence[str] = (), preset: str = "auto", out: Path | None = None,
                params: dict[str, Any] | None = None, timeout: float | None = None,
                html_export: bool = True, echo=print, force: bool = False,
                after_each: Callable[[LessonResult], None] | None = None) -> list[LessonResult]:
    """Execute lessons into `out` (default `runs/<timestamp>/`); writes metrics.json and index.html.

    `after_each(result)` runs after every lesson (the bench counts the cache entries it built there).
    `timeout`: seconds per cell; None: `default_cell_timeout(preset)`; 0: no limit.

    A KeyboardInterrupt (`Interrupted` for SIGTERM under `main`) stops the running lesson's processes,
    records it as `interrupted` and propagates; the lessons after it do not run.
    """
    if preset not in PRESETS:
        raise ParameterError(f"preset={preset!r} is not one of {PRESETS}")
    lessons = select(ids, list_lessons())
    if not lessons:
        raise ParameterError(f"no lesson notebooks found in {notebooks_dir()}")
    per_lesson = check_parameters(lessons, dict(params or {}))
    timeout = default_cell_timeout(preset) if timeout is None else timeout
    out = Path(out or default_run_folder())
    prepare_run_folder(out, force)
    results: list[LessonResult] = []
    running = None  # (lesson, start time) while a lesson executes
    write_summary(out, results, preset)
    try:
        for lesson in lessons:
            echo(f"[{lesson.stem}] running (preset={preset}) ...")
            running = lesson, time.perf_counter()
            result = execute_in_subprocess(lesson, out, {"preset": preset, **per_lesson[lesson.stem]},
                                           timeout, html_export)
            running = None
            results.append(result)
            if after_each:
                after_each(result)
            peak = f"{result.peak_mb:.0f} MB" if result.peak_mb else "?"
            echo(f"[{lesson.stem}] {result.status} in {result.wall_s:.0f} s, peak {peak}"
                 + (f"\n    {result.error}" if result.error else ""))
            write_summary(out, results, preset)
    except KeyboardInterrupt as exc:
        if running:
            results.append(interrupted_result(*running, out, exc))
            echo(f"[{results[-1].lesson}] {results[-1].error} after {results[-1].wall_s:.0f} s")
        write_summary(out, results, preset)
        raise
    echo(f"run folder: {out}  (open {out / 'index.html'})")
    return results


def prepare_run_folder(out: Path, force: bool) -> None:
    """Create `out`; refuse a folder that cannot be written, or that holds a run unless `force`."""
    if (out / "metrics.json").exists() and not force:
        raise ParameterError(f"--out {out} already holds a run (metrics.json); pass --force to overwrite it "
                             f"or choose a new folder, e.g. --out {out.parent / (out.name + '-2')}")
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as exc:
        raise ParameterError(f"--out {out} is not a writable folder ({exc.strerror or exc}); "
                             f"choose another, e.g. --out {REPO / 'runs' / 'mine'}") from None


def interrupted_result(lesson: Lesson, t0: float, out: Path, exc: KeyboardInterrupt) -> LessonResult:
    """The record of a lesson stopped by a signal; its partly executed notebook is kept when there is one."""
    signame = signal.Signals(getattr(exc, "signum", signal.SIGINT)).name
    nb_out = out / lesson.path.name
    return LessonResult(lesson.stem, "interrupted", time.perf_counter() - t0, None, error=f"stopped by {signame}",
                        notebook=nb_out.name if nb_out.exists() else None)


def execute_in_subprocess(lesson: Lesson, out: Path, params: dict, timeout: float | None,
                          html_export: bool) -> LessonResult:
    """Run one lesson in a child process (its own peak memory), returning its result.

    The child leads its own process group; if anything (Ctrl-C, SIGTERM) interrupts the wait, the
    group is stopped before the exception propagates, so no lesson keeps running in the background.
    """
    report = out / f".{lesson.stem}.result.json"
    # TLKIT_HEADLESS: progress bars print one final line and widgets leave a picture (see tlkit.progress)
    env = dict(os.environ, TLKIT_HEADLESS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "tlkit.execute", str(lesson.path), str(out), json.dumps(params),
           str(timeout or 0), str(report)]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            proc.wait()
        except BaseException:
            stop_process_group(proc)
            report.unlink(missing_ok=True)
            raise
        log.seek(0)
        tail = log.read()[-2000:]
    if report.exists():
        result = LessonResult(**json.loads(report.read_text()))
        report.unlink()
        if html_export and result.notebook:   # here, not in the child: nbconvert is imported once per run
            result.html = export_html(out / result.notebook)
        return result
    return LessonResult(lesson.stem, "failed", time.perf_counter() - t0, None, error=f"runner crashed: {tail}")


def stop_process_group(proc: subprocess.Popen, grace: float = GRACE_S) -> None:
    """SIGTERM the process group `proc` leads; SIGKILL it if its leader outlives `grace` seconds.

    On SIGTERM the lesson process unwinds papermill, which shuts its kernel down (the kernel runs in a
    session of its own); a kernel whose lesson process was SIGKILLed exits within a second by itself
    (ipykernel's parent poller).
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()








def claims_ledger(out: Path, results: list[LessonResult]) -> list[dict]:
    """All 29 claims with the verdicts this run's lessons recorded, linked to the cells that state them."""
    import nbformat

    from .claims import ledger, verdict_cells
    found = []
    for r in results:
        nb_path = out / r.notebook if r.notebook else None
        cells = verdict_cells(nbformat.read(str(nb_path), as_version=4)) if nb_path and nb_path.is_file() else {}
        found.append((r.lesson, r.metrics.get("claims"), cells, r.html))
    return ledger(found)


def claims_table_html(rows: list[dict]) -> str:
    """The run's claims ledger as an HTML table: the page an instructor hands out after `make lessons`."""
    from .claims import CONTRADICTED, MIN_RUNS, SUPPORTED
    colours = {"supported": "#e6f4ea", "contradicted": "#fce8e6", "not shown at this size": "#fef7e0"}
    body = []
    for row in rows:
        if "effect" in row:
            scale, offset, unit = row.get("scale", 100.0), row.get("offset", 0.0), row.get("unit", "")
            show = (lambda v: f"{v * scale + offset:.2f}") if offset else (lambda v: f"{v * scale:+.2f}")
            effect = f"{show(row['effect'])} [{show(row['ci'][0])}, {show(row['ci'][1])}] {unit}"
            n, what = f"{row['n']:,}", row.get("what", "")
        else:
            effect = n = what = ""
        lesson = html.escape(row["lesson"] or "—")
        verdict = html.escape(row["verdict"])
        if row["verdict"] in (SUPPORTED, CONTRADICTED) and 1 <= row.get("runs", 0) < MIN_RUNS:
            verdict += f"<br><small>provisional: {row['runs']} run{'s' if row['runs'] > 1 else ''} per setting</small>"
        if row.get("link"):
            lesson = f'<a href="{html.escape(row["link"])}">{lesson}</a>'
        body.append(f'<tr style="background:{colours.get(row["verdict"], "#fff")}"><td>{row["id"]}</td>'
                    f"<td>{html.escape(row['claim'])}<br><small>{html.escape(row['source'])}</small></td>"
                    f"<td>{lesson}</td><td><b>{verdict}</b></td><td>{html.escape(effect)}</td>"
                    f"<td>{n}</td><td><small>{html.escape(what)}</small></td></tr>")
    return ("<h2>The notes' claims, settled by this run</h2><p>Effect signed in the claim's direction (positive: as "
            "the notes say), with its 95 % interval: <i>supported</i> when the interval lies above zero, "
            "<i>contradicted</i> below, <i>not shown at this size</i> when it covers zero. A settled verdict from "
            f"fewer than {MIN_RUNS} training runs per setting is marked provisional: another seed can change it.</p>"
            "<table><tr><th>#</th><th>claim</th><th>lesson</th><th>verdict</th><th>effect [95 % interval]</th>"
            f"<th>n</th><th>what was compared</th></tr>{''.join(body)}</table>")


def write_summary(out: Path, results: list[LessonResult], preset: str) -> None:
    """metrics.json (everything, with the claims ledger) and index.html (the tables a person reads)."""
    ledger_rows = claims_ledger(out, results)
    payload = {"preset": preset, "created": dt.datetime.now().isoformat(timespec="seconds"),
               "lessons": {r.lesson: asdict(r) for r in results}, "claims": ledger_rows}
    (out / "metrics.json").write_text(json.dumps(payload, indent=2))
    rows = []
    for r in results:
        link = f'<a href="{html.escape(r.html)}">{html.escape(r.lesson)}</a>' if r.html else html.escape(r.lesson)
        scalars = {k: v for k, v in r.metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(scalars.items())[:8])
        colour = {"ok": "#e6f4ea", "interrupted": "#fef7e0"}.get(r.status, "#fce8e6")
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
        f"<th>key metrics</th></tr>{''.join(rows)}</table>{claims_table_html(ledger_rows)}", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `lessons list`, `lessons run` and `bench`; 2 on bad input, 128 + signal when stopped."""
    args = _parser().parse_args(argv)
    try:
        if args.area == "bench":
            from .bench import bench
            with signals_interrupt():
                try:
                    summary = bench(args.ids, args.preset, args.out, args.against,
                                    params={k: parse_value(v) for k, v in args.param})
                except Interrupted as exc:
                    print(f"bench stopped by {exc}", file=sys.stderr)
                    return 128 + exc.signum
            return 0 if all(v["status"] == "ok" for phase in ("cold", "warm") for v in summary[phase].values()) else 1
        if args.area == "modules":
            print(modules_markdown(), end="")
            return 0
        return list_command(args.ids, args.verbose) if args.verb == "list" else run_command(args)
    except ParameterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _lesson_selection(parser: argparse.ArgumentParser, preset: str, out_help: str) -> None:
    """The arguments `lessons run` and `bench` share: which lessons, which preset, where to write."""
    parser.add_argument("ids", nargs="*", help="lesson ids (e.g. 0 3 or 03_lr_finder); default: all")
    parser.add_argument("--preset", default=preset, choices=PRESETS)
    parser.add_argument("--out", type=Path, default=None, help=out_help)
    parser.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="set a notebook parameter, e.g. -p dataset dtd10 (see `lessons list -v`)")


def _parser() -> argparse.ArgumentParser:
    """`python -m tlkit lessons list|run ...`."""
    parser = argparse.ArgumentParser(prog="python -m tlkit", description="tlkit lesson runner")
    sub = parser.add_subparsers(dest="area", required=True)
    lessons = sub.add_parser("lessons", help="list or run lesson notebooks")
    verbs = lessons.add_subparsers(dest="verb", required=True)
    ls = verbs.add_parser("list", help="list the lessons and their parameters")
    ls.add_argument("ids", nargs="*", help="lesson ids (e.g. 0 3 or 03_lr_finder); default: all")
    ls.add_argument("-v", "--verbose", action="store_true", help="one line per parameter: default and help")
    run = verbs.add_parser("run", help="execute lessons headless into a run folder")
    _lesson_selection(run, "auto", "run folder (default runs/<timestamp>)")
    run.add_argument("--force", action="store_true", help="run into an --out folder that already holds a run")
    run.add_argument("--timeout", type=float, default=None,
                     help=f"seconds allowed per cell (default: {QUICK_CELL_TIMEOUT_S:.0f} in the quick preset, "
                          "none in full; 0: no limit)")
    run.add_argument("--no-html", action="store_true", help="skip the HTML export")
    bench = sub.add_parser("bench", help="run the lessons twice (empty cache, then filled) and time them")
    _lesson_selection(bench, "quick", "bench folder (default runs/bench-<timestamp>)")
    bench.add_argument("--against", type=Path, default=None, help="a previous bench.json to compare with")
    sub.add_parser("modules", help="print the package map (docs/MODULES.md): each module's summary and names")
    return parser


def modules_markdown() -> str:
    """The package map, generated from each module's docstring and `__all__` (docs/MODULES.md is this text)."""
    import importlib
    package = Path(__file__).resolve().parent
    names = sorted(".".join(p.relative_to(package.parent).with_suffix("").parts)
                   for p in package.rglob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    core = [n for n in names if not n.startswith(("tlkit.lessons.", "tlkit.widgets."))]
    lines = ["# tlkit, module by module", "",
             "Generated by `python -m tlkit modules` from each module's docstring and `__all__`; "
             "tests/test_architecture.py checks that this file is current.", ""]
    for title, group in [("The core", core), ("One module per lesson (tlkit/lessons)",
                                               [n for n in names if n.startswith("tlkit.lessons.")]),
                         ("Widgets (tlkit/widgets)", [n for n in names if n.startswith("tlkit.widgets.")])]:
        lines += [f"## {title}", "", "| module | what it is | public names |", "|---|---|---|"]
        for name in group:
            module = importlib.import_module(name)
            summary = (module.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
            public = ", ".join(f"`{n}`" for n in sorted(getattr(module, "__all__", ()), key=str.lower))
            lines.append(f"| `{name}` | {summary.replace('|', '/')} | {public} |")
        lines.append("")
    return "\n".join(lines)


def list_command(ids: Sequence[str], verbose: bool) -> int:
    """Print the lessons with their parameters (`verbose`: one line each, with default and help)."""
    for lesson in select(ids, list_lessons()):
        params = notebook_parameters(lesson.path).values()
        if not verbose:
            print(f"{lesson.id}  {lesson.name:28s} {', '.join(f'{p.name}={p.default!r}' for p in params)}")
            continue
        print(f"{lesson.id}  {lesson.name}")
        for p in params:
            print(f"    {p.name:22s} {p.default!r:22s} {p.help}".rstrip())
    if not verbose:
        print("(each parameter's default and meaning: python -m tlkit lessons list -v [IDS])")
    return 0


def run_command(args: argparse.Namespace) -> int:
    """`lessons run`: 0 when every lesson passed, 1 when one failed, 128 + signal when stopped."""
    out = args.out or default_run_folder()
    with signals_interrupt():
        try:
            results = run_lessons(args.ids, args.preset, out, {k: parse_value(v) for k, v in args.param},
                                  args.timeout, not args.no_html, force=args.force)
        except Interrupted as exc:
            print(f"stopped by {exc}: the running lesson is marked interrupted in {out / 'index.html'}",
                  file=sys.stderr)
            return 128 + exc.signum
    failed = [r.lesson for r in results if r.status != "ok"]
    if failed:
        print(f"{len(failed)} lesson(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
