"""Mark the mutants of a cosmic-ray session that change a type annotation as skipped.

``python tests/mutate_filter.py .mutate/store.sqlite`` between ``cosmic-ray init`` and
``cosmic-ray exec`` (``make mutate`` does it). cosmic-ray 8.7 mutates annotations like any other
expression (``int | None`` to ``int + None``), and none of its filters (``cr-filter-pragma``,
``-operators``, ``-lines``, ``-git``) can tell an annotation apart. In a module with ``from
__future__ import annotations`` they are strings never evaluated, so such a mutant cannot be
noticed by a test, only by ``make typecheck``: it is equivalent by construction, and most of the
survivors of a run were these.

Annotations that are evaluated at run time are left to be run: class fields of a class with a
base (``msgspec.Struct``, ``NamedTuple``, ``TypedDict`` read them), and every annotation of a
module without the future import.
"""

from __future__ import annotations

import argparse
import ast
from collections.abc import Iterator
from pathlib import Path

from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import WorkerOutcome, WorkResult

Position = tuple[int, int]  # line (from 1), column (in characters, from 0), as parso counts

REASON = "inside a type annotation: never evaluated (from __future__ import annotations)"


def _has_future_annotations(tree: ast.Module) -> bool:
    return any(
        isinstance(node, ast.ImportFrom)
        and node.module == "__future__"
        and any(alias.name == "annotations" for alias in node.names)
        for node in tree.body
    )


def _annotations(tree: ast.AST) -> Iterator[ast.expr]:
    """Every annotation that is never evaluated: of arguments and returns, and of variables
    except the fields of a class with a base."""
    evaluated: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.bases:
            evaluated.update(
                id(stmt.annotation) for stmt in node.body if isinstance(stmt, ast.AnnAssign)
            )
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if node.returns is not None:
                yield node.returns
            a = node.args
            for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
                if arg is not None and arg.annotation is not None:
                    yield arg.annotation
        elif isinstance(node, ast.AnnAssign) and id(node.annotation) not in evaluated:
            yield node.annotation


def annotation_spans(source: str) -> list[tuple[Position, Position]]:
    """Where the never-evaluated annotations of a module lie (start inclusive, end exclusive);
    none if the module evaluates its annotations."""
    tree = ast.parse(source)
    if not _has_future_annotations(tree):
        return []
    lines = source.splitlines()

    def position(line: int, byte_col: int) -> Position:
        # ast counts columns in UTF-8 bytes, parso in characters.
        return line, len(lines[line - 1].encode()[:byte_col].decode())

    spans = []
    for node in _annotations(tree):
        assert node.end_lineno is not None and node.end_col_offset is not None
        spans.append(
            (
                position(node.lineno, node.col_offset),
                position(node.end_lineno, node.end_col_offset),
            )
        )
    return spans


def skip_annotation_mutants(db: WorkDB) -> tuple[int, int]:
    """Mark the pending work items whose mutations all lie in annotations as skipped:
    (skipped, pending before)."""
    spans: dict[Path, list[tuple[Position, Position]]] = {}
    pending = db.pending_work_items
    skipped = []
    for item in pending:
        inside = []
        for mutation in item.mutations:
            path = Path(mutation.module_path)
            if path not in spans:
                spans[path] = annotation_spans(path.read_text(encoding="utf-8"))
            start = tuple(mutation.start_pos)
            inside.append(any(lo <= start < hi for lo, hi in spans[path]))
        if inside and all(inside):
            skipped.append(item.job_id)
    if skipped:
        db.set_multiple_results(
            skipped, WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output=REASON)
        )
    return len(skipped), len(pending)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("session", help="the cosmic-ray session database (after init)")
    args = parser.parse_args()
    with use_db(args.session, WorkDB.Mode.open) as db:
        skipped, pending = skip_annotation_mutants(db)
    print(f"{args.session}: {skipped} of {pending} mutants skipped, {REASON}")


if __name__ == "__main__":
    main()
