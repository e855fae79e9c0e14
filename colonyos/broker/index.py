"""The SQLite projection of the process and graph buckets, for listings, filters and ids.

It is never the truth: the broker rebuilds it from KV when it starts, and it can be deleted
at any time. sqlite is synchronous, so one worker thread owns the connection; the event loop
hands it batches of processes and never blocks on it.

A batch is written by one statement that reads its rows from a single JSON parameter
(``json_each``), not by ``executemany``: sqlite releases the GIL while it steps a statement
and must then wait for the busy event loop to hand it back (up to the 5 ms switch interval).
Stepping once per row, the writer thread managed a few hundred rows a second under load, fell
behind and held every pending process in memory; stepping once per batch, sqlite's work runs
beside the event loop on another core.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import msgspec
import sqlite_utils

from colonyos.limits import json_array_within
from colonyos.messages import ListProcesses
from colonyos.models import ZERO_TIME, Process, ProcessGraph, ProcessState
from colonyos.statistics import FunctionStats, seconds_between

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock on the index file
    fcntl = None  # type: ignore[assignment]

__all__ = ["ProcessIndex"]

logger = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode
_TABLE = "processes"
_GRAPHS = "graphs"
# Writes wait this long, so that a process's transitions in the meantime cost one row write.
# Readers never see the delay: a listing applies what is pending first.
_LINGER_S = 0.5


_COLUMNS = (
    "processid",
    "colony",
    "executortype",
    "state",
    "label",
    "submissiontime",
    "prioritytime",
    "graphid",
    "endtime",
    "funcname",
    "waittime",
    "exectime",
    "json",
)
_ROWS_PER_STATEMENT = 1000
# One statement per batch: the rows come as one JSON array of arrays, in _COLUMNS order.
_UPSERT = (
    f"INSERT INTO {_TABLE} ({', '.join(_COLUMNS)}) "
    f"SELECT {', '.join(f'value ->> {i}' for i in range(len(_COLUMNS)))} FROM json_each(?) "
    "WHERE true "  # sqlite's upsert-from-SELECT needs a WHERE before ON CONFLICT
    "ON CONFLICT(processid) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[1:])
)
_GRAPH_COLUMNS = ("graphid", "colony", "state", "submissiontime", "endtime", "json")
_GRAPH_UPSERT = (
    f"INSERT INTO {_GRAPHS} ({', '.join(_GRAPH_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(graphid) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _GRAPH_COLUMNS[1:])
)
# Above every hexadecimal character: ``id >= prefix AND id < prefix || _AFTER_HEX`` is a range
# over the primary key's index.
_AFTER_HEX = "~"


def _iso(t: datetime) -> str:
    # Fixed width, so that the text sorts as the time does.
    return t.isoformat(timespec="microseconds")


def _ended(t: datetime) -> str:
    """An end time for the index: empty while not ended (Go's zero time in the JSON)."""
    return "" if t == ZERO_TIME else _iso(t)


def _row(process: Process, data: bytes | None = None) -> tuple[Any, ...]:
    """The values of _COLUMNS for a process."""
    return (
        process.process_id,
        process.colony_name,
        process.executor_type,
        int(process.state),
        process.spec.label,
        _iso(process.submission_time),
        process.priority_time,
        process.process_graph_id,
        _ended(process.end_time),
        process.spec.func_name,
        *_times(process),
        (data if data is not None else _encode(process)).decode(),
    )


def _graph_row(graph: ProcessGraph) -> tuple[Any, ...]:
    """The values of _GRAPH_COLUMNS for a graph."""
    return (
        graph.process_graph_id,
        graph.colony_name,
        int(graph.state),
        _iso(graph.submission_time),
        _ended(graph.end_time),
        _encode(graph).decode(),
    )


class ProcessIndex:
    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="colonies-index")
        # processid -> latest process (and its JSON if known), or None: delete its row
        self._pending: dict[str, tuple[Process, bytes | None] | None] = {}
        self._pending_graphs: dict[str, ProcessGraph | None] = {}  # graphid -> latest, or gone
        self._flushing: asyncio.Task[None] | None = None
        self._db: sqlite_utils.Database | None = None
        self._lock: IO[bytes] | None = None  # held while this index owns its file
        self._flush_now = asyncio.Event()

    async def open(self) -> None:
        await self._run(self._open_sync)

    def _open_sync(self) -> None:
        path = self._path
        if path is not None and not self._own_file(path):
            logger.info("another broker keeps its index in %s: this one keeps it in memory", path)
            path = None
        if path is None:
            conn = sqlite3.connect(":memory:", check_same_thread=False)
        else:
            conn = sqlite3.connect(str(path), check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            # A projection rebuilt from KV at every start: nothing to gain from syncing it.
            conn.execute("PRAGMA synchronous=OFF")
        db = sqlite_utils.Database(conn)
        # A projection: start empty and refill from KV, so a stale or foreign file is harmless.
        table = db.table(_TABLE)
        if table.exists():
            table.drop()
        table.create(
            {
                "processid": str,
                "colony": str,
                "executortype": str,
                "state": int,
                "label": str,
                "submissiontime": str,
                "prioritytime": int,
                "graphid": str,
                "endtime": str,
                "funcname": str,
                "waittime": float,
                "exectime": float,
                "json": str,
            },
            pk="processid",
        )
        table.create_index(["colony", "state", "submissiontime"])
        table.create_index(["colony", "executortype"])
        table.create_index(["endtime"])
        graphs = db.table(_GRAPHS)
        if graphs.exists():
            graphs.drop()
        graphs.create(
            {
                "graphid": str,
                "colony": str,
                "state": int,
                "submissiontime": str,
                "endtime": str,
                "json": str,
            },
            pk="graphid",
        )
        graphs.create_index(["colony", "submissiontime"])
        graphs.create_index(["endtime"])
        self._db = db

    async def close(self) -> None:
        await self.flush()
        await self._run(self._close_sync)
        self._thread.shutdown(wait=True)

    def _own_file(self, path: Path) -> bool:
        """Lock the index file for this broker; False if another broker (sharing the data
        directory) holds it: opening it would drop the other's table, which each broker
        empties at start and refills from KV."""
        path.parent.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            return True
        lock = path.with_name(path.name + ".lock").open("ab")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return False
        self._lock = lock
        return True

    def _close_sync(self) -> None:
        if self._db is not None:
            self._db.conn.close()
        if self._lock is not None:
            self._lock.close()  # and with it the lock
            self._lock = None

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    # -- writes: coalesced per process, applied in batches ------------------------------
    def put(self, process: Process, data: bytes | None = None) -> None:
        """Index the process (``data``: its JSON, if the caller has it already)."""
        self._pending[process.process_id] = (process, data)
        self._schedule()

    def remove(self, process_id: str) -> None:
        self._pending[process_id] = None
        self._schedule()

    def put_graph(self, graph: ProcessGraph) -> None:
        """Index the graph as written (at creation, and at every change of its state)."""
        self._pending_graphs[graph.process_graph_id] = graph
        self._schedule()

    def remove_graph(self, graph_id: str) -> None:
        self._pending_graphs[graph_id] = None
        self._schedule()

    def _schedule(self) -> None:
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        # Linger a moment first: a process's quick transitions then cost one write, not three.
        # A listing flushes at once (flush() below), so readers never see the delay.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_LINGER_S):
                await self._flush_now.wait()
        self._flush_now.clear()
        while self._pending or self._pending_graphs:
            batch, self._pending = self._pending, {}
            graphs, self._pending_graphs = self._pending_graphs, {}
            await self._run(self._apply_sync, batch, graphs)

    def _apply_sync(
        self,
        batch: dict[str, tuple[Process, bytes | None] | None],
        graphs: dict[str, ProcessGraph | None] | None = None,
    ) -> None:
        assert self._db is not None
        rows = [_row(*latest) for latest in batch.values() if latest is not None]
        gone = [(pid,) for pid, latest in batch.items() if latest is None]
        conn = self._db.conn
        with conn:
            # One prepared statement for the hot path: sqlite-utils' upsert_all looks the
            # table up again on every call, which cost more than the writes themselves.
            for start in range(0, len(rows), _ROWS_PER_STATEMENT):
                conn.execute(_UPSERT, (_encode(rows[start : start + _ROWS_PER_STATEMENT]),))
            if gone:
                conn.executemany(f"DELETE FROM {_TABLE} WHERE processid = ?", gone)
            if graphs:
                written = [_graph_row(g) for g in graphs.values() if g is not None]
                removed = [(gid,) for gid, g in graphs.items() if g is None]
                conn.executemany(_GRAPH_UPSERT, written)
                conn.executemany(f"DELETE FROM {_GRAPHS} WHERE graphid = ?", removed)

    async def flush(self) -> None:
        """Wait until every write handed in so far is applied (read-your-writes for list)."""
        self._flush_now.set()
        while self._flushing is not None and not self._flushing.done():
            await asyncio.shield(self._flushing)
        if self._pending or self._pending_graphs:
            await self._drain()

    # -- reads --------------------------------------------------------------------------
    async def query(self, colony: str, q: ListProcesses, max_bytes: int | None = None) -> bytes:
        """The matching processes as one JSON array, newest first; with ``max_bytes``, only the
        first of them that the array holds within that size (a reply is one NATS message)."""
        await self.flush()
        rows: list[str] = await self._run(self._query_sync, colony, q)
        if max_bytes is None:
            return b"[" + ",".join(rows).encode() + b"]"
        return json_array_within((row.encode() for row in rows), max_bytes)

    def _query_sync(self, colony: str, q: ListProcesses) -> list[str]:
        assert self._db is not None
        where, params = ["colony = ?"], [colony]
        if q.state is not None:
            where.append("state = ?")
            params.append(str(int(q.state)))
        if q.executor_type:
            where.append("executortype = ?")
            params.append(q.executor_type)
        if q.label:
            where.append("label = ?")
            params.append(q.label)
        if q.since is not None:
            where.append("submissiontime >= ?")
            params.append(_iso(q.since))
        if q.until is not None:
            where.append("submissiontime < ?")
            params.append(_iso(q.until))
        sql = (
            f"SELECT json FROM {_TABLE} WHERE {' AND '.join(where)} "
            "ORDER BY submissiontime DESC, prioritytime DESC LIMIT ?"
        )
        params.append(str(max(0, q.limit)))
        return [row[0] for row in self._db.execute(sql, params).fetchall()]

    async def resolve(self, colony: str, prefix: str, *, graph: bool, limit: int) -> list[str]:
        """Up to ``limit`` ids of the colony's processes (or graphs) that begin with
        ``prefix`` (lowercase hexadecimal), in order."""
        await self.flush()
        found: list[str] = await self._run(self._resolve_sync, colony, prefix, graph, limit)
        return found

    def _resolve_sync(self, colony: str, prefix: str, graph: bool, limit: int) -> list[str]:
        assert self._db is not None
        table, key = (_GRAPHS, "graphid") if graph else (_TABLE, "processid")
        sql = (
            f"SELECT {key} FROM {table} WHERE {key} >= ? AND {key} < ? AND colony = ? "
            f"ORDER BY {key} LIMIT ?"
        )
        rows = self._db.execute(sql, [prefix, prefix + _AFTER_HEX, colony, limit]).fetchall()
        return [str(row[0]) for row in rows]

    async def graphs(self, colony: str, limit: int, max_bytes: int | None = None) -> bytes:
        """The colony's process graphs as one JSON array, newest first; with ``max_bytes``,
        only the first of them that the array holds within that size."""
        await self.flush()
        rows: list[str] = await self._run(self._graphs_sync, colony, limit)
        if max_bytes is None:
            return b"[" + ",".join(rows).encode() + b"]"
        return json_array_within((row.encode() for row in rows), max_bytes)

    def _graphs_sync(self, colony: str, limit: int) -> list[str]:
        assert self._db is not None
        sql = (
            f"SELECT json FROM {_GRAPHS} WHERE colony = ? "
            "ORDER BY submissiontime DESC, graphid LIMIT ?"
        )
        return [row[0] for row in self._db.execute(sql, [colony, max(0, limit)]).fetchall()]

    async def ended_before(
        self, cutoff: datetime, *, limit: int, colony: str = "", state: int | None = None
    ) -> list[tuple[str, str]]:
        """(colony, process id) of finished processes that are not part of a graph and ended
        before ``cutoff``, oldest first; optionally of one colony, in one state."""
        await self.flush()
        found: list[tuple[str, str]] = await self._run(
            self._ended_before_sync, _iso(cutoff), limit, colony, state
        )
        return found

    def _ended_before_sync(
        self, cutoff: str, limit: int, colony: str, state: int | None
    ) -> list[tuple[str, str]]:
        assert self._db is not None
        where, params = ["endtime != ''", "endtime < ?", "graphid = ''"], [cutoff]
        if colony:
            where.append("colony = ?")
            params.append(colony)
        if state is not None:
            where.append("state = ?")
            params.append(str(state))
        sql = (
            f"SELECT colony, processid FROM {_TABLE} WHERE {' AND '.join(where)} "
            "ORDER BY endtime LIMIT ?"
        )
        rows = self._db.execute(sql, [*params, str(limit)]).fetchall()
        return [(str(c), str(p)) for c, p in rows]

    async def graphs_ended_before(self, cutoff: datetime, *, limit: int) -> list[tuple[str, str]]:
        """(colony, graph id) of graphs whose state ended before ``cutoff``, oldest first."""
        await self.flush()
        found: list[tuple[str, str]] = await self._run(
            self._graphs_ended_before_sync, _iso(cutoff), limit
        )
        return found

    def _graphs_ended_before_sync(self, cutoff: str, limit: int) -> list[tuple[str, str]]:
        assert self._db is not None
        sql = (
            f"SELECT colony, graphid FROM {_GRAPHS} WHERE endtime != '' AND endtime < ? "
            "ORDER BY endtime LIMIT ?"
        )
        rows = self._db.execute(sql, [cutoff, limit]).fetchall()
        return [(str(c), str(g)) for c, g in rows]

    async def standalone_in_state(
        self, colony: str, state: int, executor_type: str, *, limit: int
    ) -> list[str]:
        """Ids of the colony's processes in ``state`` that are not part of a graph (optionally
        of one executor type)."""
        await self.flush()
        found: list[str] = await self._run(
            self._standalone_sync, colony, state, executor_type, limit
        )
        return found

    def _standalone_sync(
        self, colony: str, state: int, executor_type: str, limit: int
    ) -> list[str]:
        assert self._db is not None
        where, params = ["colony = ?", "state = ?", "graphid = ''"], [colony, str(state)]
        if executor_type:
            where.append("executortype = ?")
            params.append(executor_type)
        sql = f"SELECT processid FROM {_TABLE} WHERE {' AND '.join(where)} LIMIT ?"
        return [str(r[0]) for r in self._db.execute(sql, [*params, str(limit)]).fetchall()]

    async def colony_ids(self, colony: str) -> tuple[list[str], list[str]]:
        """Every process id and every graph id of the colony."""
        await self.flush()
        found: tuple[list[str], list[str]] = await self._run(self._colony_ids_sync, colony)
        return found

    def _colony_ids_sync(self, colony: str) -> tuple[list[str], list[str]]:
        assert self._db is not None
        processes = self._db.execute(f"SELECT processid FROM {_TABLE} WHERE colony = ?", [colony])
        graphs = self._db.execute(f"SELECT graphid FROM {_GRAPHS} WHERE colony = ?", [colony])
        return [str(r[0]) for r in processes.fetchall()], [str(r[0]) for r in graphs.fetchall()]

    async def counts(self) -> tuple[list[tuple[str, str, int, int]], list[tuple[str, int, int]]]:
        """Every colony's processes per executor type and state, and graphs per state, as
        (colony, executor type, state, count) and (colony, state, count) rows."""
        await self.flush()
        rows: tuple[list[tuple[str, str, int, int]], list[tuple[str, int, int]]]
        rows = await self._run(self._counts_sync)
        return rows

    def _counts_sync(self) -> tuple[list[tuple[str, str, int, int]], list[tuple[str, int, int]]]:
        assert self._db is not None
        processes = self._db.execute(
            f"SELECT colony, executortype, state, count(*) FROM {_TABLE} "
            "GROUP BY colony, executortype, state"
        )
        graphs = self._db.execute(
            f"SELECT colony, state, count(*) FROM {_GRAPHS} GROUP BY colony, state"
        )
        return (
            [(str(c), str(t), int(s), int(n)) for c, t, s, n in processes.fetchall()],
            [(str(c), int(s), int(n)) for c, s, n in graphs.fetchall()],
        )

    async def stats(self, colony: str) -> tuple[dict[int, int], dict[str, dict[int, int]]]:
        """Process counts per state, and per executor type and state."""
        await self.flush()
        result: tuple[dict[int, int], dict[str, dict[int, int]]] = await self._run(
            self._stats_sync, colony
        )
        return result

    def _stats_sync(self, colony: str) -> tuple[dict[int, int], dict[str, dict[int, int]]]:
        assert self._db is not None
        sql = (
            f"SELECT executortype, state, count(*) FROM {_TABLE} WHERE colony = ? "
            "GROUP BY executortype, state"
        )
        states: dict[int, int] = {}
        by_type: dict[str, dict[int, int]] = {}
        for etype, state, n in self._db.execute(sql, [colony]).fetchall():
            states[int(state)] = states.get(int(state), 0) + int(n)
            by_type.setdefault(str(etype), {})[int(state)] = int(n)
        return states, by_type

    async def graph_stats(self, colony: str) -> dict[int, int]:
        """Process graph counts per state."""
        await self.flush()
        result: dict[int, int] = await self._run(self._graph_stats_sync, colony)
        return result

    def _graph_stats_sync(self, colony: str) -> dict[int, int]:
        assert self._db is not None
        sql = f"SELECT state, count(*) FROM {_GRAPHS} WHERE colony = ? GROUP BY state"
        return {int(s): int(n) for s, n in self._db.execute(sql, [colony]).fetchall()}

    async def function_stats(self, colony: str) -> list[FunctionStats]:
        """Per function name and executor type: counts per state, and waiting and execution
        times, most called first. Computed in the index's thread (it reads every row)."""
        await self.flush()
        result: list[FunctionStats] = await self._run(self._function_stats_sync, colony)
        return result

    def _function_stats_sync(self, colony: str) -> list[FunctionStats]:
        """Counts by state from one GROUP BY, the times from the columns written with each
        row (no process JSON is read)."""
        assert self._db is not None
        groups: dict[tuple[str, str], tuple[dict[str, int], list[float], list[float]]] = {}

        def group(func: str, etype: str) -> tuple[dict[str, int], list[float], list[float]]:
            return groups.setdefault((str(func), str(etype)), ({}, [], []))

        where = f"FROM {_TABLE} WHERE colony = ?"
        counts = f"SELECT funcname, executortype, state, count(*) {where} GROUP BY 1, 2, 3"
        for func, etype, state, n in self._db.execute(counts, [colony]):
            group(func, etype)[0][_STATE_TOKENS[int(state)]] = int(n)
        times = "SELECT funcname, executortype, {0} " + where + " AND {0} IS NOT NULL"
        for func, etype, seconds in self._db.execute(times.format("waittime"), [colony]):
            group(func, etype)[1].append(float(seconds))
        for func, etype, seconds in self._db.execute(times.format("exectime"), [colony]):
            group(func, etype)[2].append(float(seconds))
        found = [FunctionStats.of(f, t, *v) for (f, t), v in groups.items()]
        return sorted(found, key=lambda s: (-s.counter, s.func_name, s.executor_type))


_STATE_TOKENS = {int(s): s.token for s in ProcessState}


def _times(process: Process) -> tuple[float | None, float | None]:
    """Its waiting time (submitted to last started) and, once it ran and ended SUCCESS or
    FAILED, its execution time (started to ended), in seconds: the function statistics."""
    wait = seconds_between(process.submission_time, process.start_time)
    ran = process.state in (ProcessState.SUCCESS, ProcessState.FAILED)
    return wait, seconds_between(process.start_time, process.end_time) if ran else None
