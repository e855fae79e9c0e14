"""Loading and checking user-authored function and workflow specs.

Colonies' JSON formats are accepted unchanged. Unknown keys are reported by their path
(``$.conditions.processes-per-node``) as warnings, or as errors in strict mode; a wrong type or
a missing required field is always an :class:`InvalidSpecError` naming the field.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import msgspec
from msgspec import inspect as mi

from colonyos import limits
from colonyos.errors import InvalidSpecError
from colonyos.models import NO_LIMIT, FunctionSpec, WorkflowSpec
from colonyos.resources import parse_bytes, parse_cpu_millis
from colonyos.subjects import check_name

__all__ = [
    "WorkflowValue",
    "check_function_spec",
    "decode_function_spec",
    "from_validation_error",
    "load_function_spec",
    "load_workflow_spec",
    "unknown_keys",
    "workflow_json",
]

_json_decoder = msgspec.json.Decoder()
_spec_decoder = msgspec.json.Decoder(FunctionSpec)

# Keys of older Colonies releases, with what replaced them, to make the error useful.
_LEGACY_KEYS = {"func": "funcname", "name": "nodename", "runtimetype": "executortype"}


def _invalid(path: str, reason: str) -> InvalidSpecError:
    return InvalidSpecError(f"{path}: {reason}", path=path, reason=reason)


def from_validation_error(err: msgspec.ValidationError, context: str = "") -> InvalidSpecError:
    """msgspec's "Expected `int` >= 0 - at `$.count`" as "$.count: expected `int` >= 0"
    (``context`` goes first: "bad assign request: $.count: ...")."""
    text = str(err)
    path = "$"
    if " - at `" in text:
        text, _, rest = text.partition(" - at `")
        path = rest.rstrip("`")
    reason = text[0].lower() + text[1:] if text else text
    if not context:
        return _invalid(path, reason)
    return InvalidSpecError(f"{context}: {path}: {reason}", path=path, reason=reason)


_BYTE_OFFSET = re.compile(r"\s*\(byte (\d+)\)$")


def _parse_json(data: bytes | str) -> Any:
    try:
        return _json_decoder.decode(data)
    except msgspec.DecodeError as err:
        raise _malformed(data, str(err)) from err


def _malformed(data: bytes | str, message: str) -> InvalidSpecError:
    """Where the JSON breaks, as line and column (msgspec gives a byte offset; people and
    editors count lines and characters)."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    found = _BYTE_OFFSET.search(message)
    if found is not None:
        reason = message[: found.start()].removeprefix("JSON is malformed: ")
        # msgspec counts from 0, except past the first trailing character.
        offset = min(len(raw), int(found[1]) - (reason == "trailing characters"))
    elif not raw.strip():
        offset, reason = 0, "the input is empty"
    else:  # truncated: it breaks where it ends
        offset, reason = len(raw.rstrip()), "the JSON ends too early"
    before = raw[:offset]
    line = before.count(b"\n") + 1
    column = len(before[before.rfind(b"\n") + 1 :].decode("utf-8", "replace")) + 1
    reason = f"malformed JSON at line {line}, column {column}: {reason}"
    return InvalidSpecError(f"$: {reason}", path="$", reason=reason, line=line, column=column)


def _without_nulls(obj: Any) -> Any:
    """Drop ``null`` members, as Go's decoder (Colonies) reads null as the zero value."""
    if isinstance(obj, dict):
        return {k: _without_nulls(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_without_nulls(v) for v in obj]
    return obj


def _struct_info(t: mi.Type) -> mi.StructType | None:
    if isinstance(t, mi.StructType):
        return t
    if isinstance(t, mi.UnionType):
        for member in t.types:
            if isinstance(member, mi.StructType):
                return member
    return None


@functools.cache
def _model_info(model: type[msgspec.Struct]) -> mi.StructType:
    # msgspec's inspection takes about a millisecond: once per model, not once per spec (a
    # workflow of 6,000 nodes took the broker 7 s).
    info = mi.type_info(model)
    assert isinstance(info, mi.StructType)
    return info


def unknown_keys(obj: Any, model: type[msgspec.Struct], path: str = "$") -> list[str]:
    """Paths of the keys in ``obj`` that ``model`` does not know, depth first."""
    return _unknown(obj, _model_info(model), path)


def _unknown(obj: Any, info: mi.StructType, path: str) -> list[str]:
    if not isinstance(obj, dict):
        return []
    fields = {f.encode_name: f for f in info.fields}
    found: list[str] = []
    for key, value in obj.items():
        f = fields.get(key)
        if f is None:
            found.append(f"{path}.{key}")
            continue
        nested = _struct_info(f.type)
        if nested is not None:
            found.extend(_unknown(value, nested, f"{path}.{key}"))
        elif isinstance(f.type, mi.ListType) and isinstance(value, list):
            item = _struct_info(f.type.item_type)
            if item is not None:
                for i, element in enumerate(value):
                    found.extend(_unknown(element, item, f"{path}.{key}[{i}]"))
    return found


_SECONDS = f"0 to {limits.MAX_SECONDS} seconds (ten years)"
_NO_LIMIT_OR = "-1 (no limit) or "
_COUNT = (0, limits.MAX_COUNT, f"a count is between 0 and {limits.MAX_COUNT}")

# Every number of a function spec: its path below the spec, how to read it, and its bounds
# (from colonyos.limits) with what they mean, for the error.
_NUMBERS: tuple[tuple[str, Callable[[FunctionSpec], object], int, int, str], ...] = (
    (
        ".priority",
        lambda s: s.priority,
        limits.PRIORITY_MIN,
        limits.PRIORITY_MAX,
        f"a priority is between {limits.PRIORITY_MIN} and {limits.PRIORITY_MAX}",
    ),
    (
        ".maxwaittime",
        lambda s: s.max_wait_time,
        NO_LIMIT,
        limits.MAX_SECONDS,
        f"maxwaittime is {_NO_LIMIT_OR}{_SECONDS}",
    ),
    (
        ".maxexectime",
        lambda s: s.max_exec_time,
        NO_LIMIT,
        limits.MAX_SECONDS,
        f"maxexectime is {_NO_LIMIT_OR}{_SECONDS}",
    ),
    (
        ".maxretries",
        lambda s: s.max_retries,
        NO_LIMIT,
        limits.MAX_RETRIES,
        f"maxretries is {_NO_LIMIT_OR}0 to {limits.MAX_RETRIES}",
    ),
    (
        ".conditions.walltime",
        lambda s: s.conditions.walltime,
        0,
        limits.MAX_SECONDS,
        f"walltime is {_SECONDS}",
    ),
    (".conditions.nodes", lambda s: s.conditions.nodes, *_COUNT),
    (".conditions.processes", lambda s: s.conditions.processes, *_COUNT),
    (".conditions.processespernode", lambda s: s.conditions.processes_per_node, *_COUNT),
    (".conditions.gpu.count", lambda s: s.conditions.gpu.count, *_COUNT),
    (".conditions.gpu.nodecount", lambda s: s.conditions.gpu.node_count, *_COUNT),
)


def _check_numbers(spec: FunctionSpec, path: str) -> None:
    """Every number within its bound, named by its path: never a bool or a float (which
    Python code can put in a spec), nor a value that overflows a deadline or a priority."""
    for key, read, low, high, meaning in _NUMBERS:
        value = read(spec)
        if type(value) is not int:
            raise _invalid(path + key, f"expected an integer, got {type(value).__name__} {value!r}")
        if not low <= value <= high:
            raise _invalid(path + key, f"{value} is out of range; {meaning}")


def check_function_spec(spec: FunctionSpec, path: str = "$") -> FunctionSpec:
    """Required fields, numbers within their bounds, resource quantities and name tokens;
    normalises limits. The client, the broker's intake (specs and workflows), ``add_child`` and
    a broker loading stored processes all check through here.

    Returns the normalised spec (0 limits become -1, "no limit").
    """
    cond = spec.conditions
    if not spec.func_name:
        raise _invalid(f"{path}.funcname", "required field is missing or empty")
    if not cond.executor_type:
        raise _invalid(f"{path}.conditions.executortype", "required field is missing or empty")
    _check_numbers(spec, path)
    names = [("executortype", cond.executor_type)]
    if cond.colony_name:
        names.append(("colonyname", cond.colony_name))
    for key, value in names:
        try:
            check_name(key, value)
        except InvalidSpecError as err:
            raise _invalid(f"{path}.conditions.{key}", err.message) from None
    for key, value, parse in (
        ("cpu", cond.cpu, parse_cpu_millis),
        ("mem", cond.mem, parse_bytes),
        ("storage", cond.storage, parse_bytes),
        ("gpu.mem", cond.gpu.mem, parse_bytes),
    ):
        try:
            parse(value)
        except ValueError as err:
            raise _invalid(f"{path}.conditions.{key}", str(err)) from None
    if spec.max_wait_time == 0 or spec.max_exec_time == 0:
        spec = msgspec.structs.replace(
            spec,
            max_wait_time=spec.max_wait_time or NO_LIMIT,
            max_exec_time=spec.max_exec_time or NO_LIMIT,
        )
    return spec


def decode_function_spec(data: bytes) -> FunctionSpec:
    """The broker's fast path: decode and check, ignoring unknown keys."""
    try:
        spec = _spec_decoder.decode(data)
    except msgspec.ValidationError:
        # The slow path, for what Go accepts and a typed decode does not (null members).
        obj = _parse_json(data)
        if not isinstance(obj, dict):
            raise _invalid("$", "expected a JSON object (a function spec)") from None
        return _convert_spec(obj, "$")
    except msgspec.DecodeError as err:
        raise _invalid("$", f"malformed JSON: {err}") from err
    return check_function_spec(spec)


def _legacy_hint(obj: Any, err: InvalidSpecError, base: str) -> InvalidSpecError:
    if not isinstance(obj, dict):
        return err
    for old, new in _LEGACY_KEYS.items():
        if old in obj and err.detail.get("path") in (f"{base}.{new}", f"{base}.conditions.{new}"):
            return _invalid(
                err.detail["path"],
                f"{err.detail['reason']} (the legacy key '{old}' is not read; rename it to "
                f"'{new}')",
            )
    return err


def _convert_spec(obj: Any, path: str) -> FunctionSpec:
    try:
        spec = msgspec.convert(_without_nulls(obj), FunctionSpec)
    except msgspec.ValidationError as err:
        inner = from_validation_error(err)
        sub = inner.detail["path"].removeprefix("$")
        raise _invalid(f"{path}{sub}", inner.detail["reason"]) from err
    try:
        return check_function_spec(spec, path)
    except InvalidSpecError as err:
        raise _legacy_hint(obj, err, path) from None


def _apply_strict(warnings: list[str], strict: bool) -> list[str]:
    if strict and warnings:
        raise InvalidSpecError(
            "unknown keys (strict mode): " + ", ".join(warnings),
            path=warnings[0],
            reason="unknown key",
            unknown=warnings,
        )
    return warnings


def load_function_spec(
    data: bytes | str, *, strict: bool = False
) -> tuple[FunctionSpec, list[str]]:
    """Parse a function spec file. Returns the spec and the paths of ignored unknown keys."""
    obj = _parse_json(data)
    if not isinstance(obj, dict):
        raise _invalid("$", f"expected a JSON object (a function spec), got {type(obj).__name__}")
    warnings = _apply_strict(unknown_keys(obj, FunctionSpec), strict)
    return _convert_spec(obj, "$"), warnings


# A workflow as a cron's or a generator's definition carries it: Colonies' JSON string, or the
# workflow itself (a list of function specs, or ``{"functionspecs": [...]}``).
WorkflowValue = str | list[object] | dict[str, object]


def workflow_json(value: WorkflowValue) -> bytes:
    """``value`` as the JSON :func:`load_workflow_spec` reads."""
    return value.encode() if isinstance(value, str) else msgspec.json.encode(value)


def load_workflow_spec(
    data: bytes | str, *, strict: bool = False
) -> tuple[WorkflowSpec, list[str]]:
    """Parse a workflow file: a JSON list of function specs, or ``{colonyname, functionspecs}``."""
    obj = _parse_json(data)
    if isinstance(obj, list):
        obj = {"functionspecs": obj}
        base = "$"
    elif isinstance(obj, dict):
        base = "$.functionspecs"
    else:
        raise _invalid("$", "expected a JSON list of function specs or a workflow object")
    items = obj.get("functionspecs")
    if not isinstance(items, list) or not items:
        raise _invalid(base, "a workflow needs a non-empty list of function specs")
    warnings = [w for w in unknown_keys(obj, WorkflowSpec) if not w.startswith("$.functionspecs")]
    specs = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise _invalid(f"{base}[{i}]", "expected a function spec object")
        warnings.extend(unknown_keys(item, FunctionSpec, f"{base}[{i}]"))
        specs.append(_convert_spec(item, f"{base}[{i}]"))
    _apply_strict(warnings, strict)
    colony = obj.get("colonyname", "")
    if not isinstance(colony, str):
        raise _invalid("$.colonyname", f"expected a string, got {type(colony).__name__}")
    return WorkflowSpec(colony_name=colony, function_specs=specs), warnings
