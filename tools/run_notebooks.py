#!/usr/bin/env python3
"""Re-execute the chapters in place, on the CPU, in reading order, keeping their widget state.

Usage:  python tools/run_notebooks.py [--timeout SECONDS] [--toc _toc.yml] [NOTEBOOK ...]
        (no NOTEBOOK: every notebook of the toc in reading order, then any other notebooks/*.ipynb)

This is what `make notebooks` runs, and the only way outputs get into the notebooks: the book is
built from them and `make test` (nbval) checks that they are still what the code produces.

- CPU only: CUDA is hidden (CUDA_VISIBLE_DEVICES="", PERCEIVER_EDU_DEVICE=cpu), so the stored
  outputs are the same whichever machine ran them, and nbval compares like with like.
- Widget state is saved in the notebook metadata (nbclient's store_widget_state), so the static
  book can render the widgets without a kernel.
- Each notebook runs in its own process with a wall-clock limit (--timeout, per notebook; the same
  number bounds any single cell). A notebook that fails or times out is left untouched on disk.
- Prints each notebook's execution time and the total.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def execute_one(path: Path, timeout: int) -> None:
    """Execute one notebook with nbclient and write it back atomically."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop("widgets", None)  # drop stale state; re-created from this run only
    for cell in nb.cells:
        cell.metadata.pop("execution", None)  # no wall-clock timestamps in the diff
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        store_widget_state=True,
        record_timing=False,
        allow_errors=False,
    )
    client.execute()
    tmp = path.with_name(f".{path.name}.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, path)


def reading_order(toc: str) -> list[Path]:
    out = subprocess.run([sys.executable, str(HERE / "toc.py"), "notebooks", toc],
                         check=True, capture_output=True, text=True).stdout
    return [Path(line) for line in out.splitlines() if line.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--timeout", type=int, default=int(os.environ.get("NB_TIMEOUT", 900)),
                        help="seconds allowed per notebook (default 900, or $NB_TIMEOUT)")
    parser.add_argument("--toc", default="_toc.yml")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # worker mode
    args = parser.parse_args()

    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ["PERCEIVER_EDU_DEVICE"] = "cpu"
    os.environ["PYTHONHASHSEED"] = "0"  # same as `make test` (nbval)

    if args.one:
        execute_one(args.one, args.timeout)
        return 0

    notebooks = args.notebooks or reading_order(args.toc)
    if not notebooks:
        print("run_notebooks: no notebooks to execute (notebooks/ is empty)")
        return 0

    total_start = time.perf_counter()
    failed: list[str] = []
    for path in notebooks:
        print(f"executing {path} ...", flush=True)
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, __file__, "--one", str(path),
                                 "--timeout", str(args.timeout)], start_new_session=True)
        try:
            rc = proc.wait(timeout=args.timeout)
            reason = f"failed (exit {rc})" if rc else ""
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the worker and its kernel
            proc.wait()
            reason = f"timed out after {args.timeout} s"
        elapsed = time.perf_counter() - start
        if reason:
            failed.append(str(path))
            print(f"  {path}: {reason} after {elapsed:.1f} s; left unchanged on disk", flush=True)
        else:
            print(f"  {path}: {elapsed:.1f} s", flush=True)
    total = time.perf_counter() - total_start
    print(f"executed {len(notebooks) - len(failed)}/{len(notebooks)} notebooks in {total:.1f} s total")
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
