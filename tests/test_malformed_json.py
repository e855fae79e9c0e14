"""Malformed JSON in a spec or workflow file is reported where it breaks, as line:column."""

from __future__ import annotations

import pytest

from colonyos.errors import InvalidSpecError
from colonyos.specs import load_function_spec, load_workflow_spec


@pytest.mark.parametrize(
    ("raw", "line", "column", "reason"),
    [
        (b'{"funcname": "f",\n  "args": [1,, 2]}', 2, 14, "invalid character"),
        (b'{\n  "funcname": "f"\n  "args": []\n}', 3, 3, "expected ',' or '}'"),
        (b'{"funcname": "f"} trailing', 1, 19, "trailing characters"),
        (b'{\n  "funcname": "f",\n', 2, 19, "the JSON ends too early"),
        (b"  \n", 1, 1, "the input is empty"),
        # Columns count characters, not bytes: "é" is two bytes in UTF-8.
        ('{"é": "é",, }'.encode(), 1, 11, "object keys must be strings"),
    ],
)
def test_where_the_json_breaks(raw: bytes, line: int, column: int, reason: str) -> None:
    for load in (load_function_spec, load_workflow_spec):
        with pytest.raises(InvalidSpecError) as info:
            load(raw)
        where = f"malformed JSON at line {line}, column {column}: "
        assert info.value.message.startswith(f"$: {where}"), info.value.message
        assert reason in info.value.message
        assert (info.value.line, info.value.column) == (line, column)
        assert "byte" not in info.value.message
