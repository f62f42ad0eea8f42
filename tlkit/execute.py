"""One lesson, executed: the runner's child process (`python -m tlkit.execute NOTEBOOK OUT PARAMS TIMEOUT REPORT`).

Kept apart from `tlkit.cli` so the child imports only papermill: `import tlkit` is lazy, so the process
that drives the kernel never loads torch (seconds and hundreds of MB per lesson). The kernel does.
"""
from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from .record import read_notebook_metrics

__all__ = ["Interrupted", "execute", "inject_parameters", "main", "signals_interrupt", "STOP_SIGNALS"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM reached the runner; `signum` says which."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Within the block SIGINT and SIGTERM raise `Interrupted`; later ones are ignored while it cleans up."""
    def handler(signum: int, frame: Any) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def inject_parameters(nb_in: Path, nb_out: Path, params: dict) -> None:
    """Write `nb_in` to `nb_out` with papermill's injected-parameters cell after its parameters cell.

    papermill's injection needs no parsing; only its check for unknown names does (and warns on lines
    it cannot parse), which `check_parameters` has done already. So papermill executes `nb_out` as is.
    """
    from papermill.iorw import load_notebook_node, write_ipynb
    from papermill.parameterize import parameterize_notebook
    write_ipynb(parameterize_notebook(load_notebook_node(str(nb_in)), params), str(nb_out))


def execute(nb_in: str, out_dir: str, params_json: str, timeout: str, report: str) -> None:
    """Papermill-execute one notebook into `out_dir`; write its status, wall and CPU time, peak memory and
    recorded metrics to `report` (JSON with the fields of `tlkit.cli.LessonResult`)."""
    import resource

    import papermill as pm
    path, out = Path(nb_in), Path(out_dir)
    nb_out = out / path.name
    t0 = time.perf_counter()
    status, error = "ok", None
    try:
        inject_parameters(path, nb_out, json.loads(params_json))
        pm.execute_notebook(str(nb_out), str(nb_out), cwd=str(path.parent),
                            execution_timeout=float(timeout) or None, progress_bar=False,
                            log_output=False)
    except pm.PapermillExecutionError as exc:
        status = "failed"
        error = (f"cell {exc.cell_index} of the executed notebook (In [{exc.exec_count}], "
                 f"`{_first_line(nb_out, exc.exec_count)}`): {exc.ename}: {exc.evalue}")
    except Exception as exc:  # kernel died, timeout, bad notebook
        from nbclient.exceptions import CellTimeoutError
        status = "failed"
        error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, CellTimeoutError):
            error += f" The limit was {float(timeout):g} s per cell: raise it with --timeout SECONDS (0: no limit)."
    wall = time.perf_counter() - t0
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    result = {"lesson": path.stem, "status": status, "wall_s": wall,
              "peak_mb": max(u.ru_maxrss for u in usage) / 1024,
              "metrics": read_notebook_metrics(nb_out) if nb_out.exists() else {}, "error": error,
              "notebook": nb_out.name, "cpu_s": sum(u.ru_utime + u.ru_stime for u in usage)}
    Path(report).write_text(json.dumps(result))


def _first_line(nb_path: Path, exec_count: int) -> str:
    """The first source line of the cell that ran as `In [exec_count]`, to point at the failing code."""
    try:
        import nbformat
        cells = nbformat.read(str(nb_path), as_version=4).cells
        source = next(c.source for c in cells if c.get("execution_count") == exec_count)
        return source.strip().splitlines()[0][:80]
    except Exception:  # the pointer is a courtesy; never fail the report over it
        return "?"


def main(argv: list[str]) -> int:
    """Child-process entry: SIGTERM from the runner unwinds papermill, which shuts the kernel down."""
    with signals_interrupt():
        try:
            execute(*argv)
        except Interrupted as exc:
            return 128 + exc.signum
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:6]))
