"""The dashboard in a real browser (headless Chromium): what the colony does shows on the open
page as it happens, by the event stream, without a reload."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from colonyos.client import Client
from colonyos.config import Settings
from colonyos.models import Conditions, FunctionSpec, Process, WorkflowSpec

from ..helpers import connect_executor
from .conftest import SHOW_MS, Chromium, Dashboard, on_loop, screenshot

expect = pytest.importorskip("playwright.sync_api").expect

BURST = 40
MARKUP = '<img src="x.png" alt="not an image">'


def _spec(
    func: str, executor_type: str = "echo", *, node: str = "", after: tuple[str, ...] = ()
) -> FunctionSpec:
    return FunctionSpec(
        node_name=node,
        func_name=func,
        args=[func],
        conditions=Conditions(executor_type=executor_type, dependencies=list(after)),
    )


def _client(board: Dashboard) -> Client:
    assert board.client is not None
    return board.client


def _until_live(page: Any) -> None:
    """The page holds the colony's counts and listens (its stream is open)."""
    expect(page.locator("#live")).to_have_text("live", timeout=SHOW_MS)
    expect(page.locator("#count-waiting")).to_have_text(re.compile(r"^\d+$"), timeout=SHOW_MS)


def test_counts_follow_a_burst_of_processes(
    live_echo: Settings, dashboard: Dashboard, chromium: Chromium, page: Any, tmp_path: Path
) -> None:
    def body() -> None:
        page.goto(dashboard.url)
        _until_live(page)
        expect(page.locator("#count-success")).to_have_text("0")
        client = _client(dashboard)
        on_loop(live_echo, client.submit_many([_spec(f"burst-{i}") for i in range(BURST)]))
        # The same page, not reloaded: the counts and the list follow the events.
        expect(page.locator("#count-success")).to_have_text(str(BURST), timeout=SHOW_MS)
        expect(page.locator("#count-waiting")).to_have_text("0", timeout=SHOW_MS)
        expect(page.locator("#count-running")).to_have_text("0", timeout=SHOW_MS)
        rows = page.locator('#processes tr[data-state="success"]')
        expect(rows).to_have_count(BURST, timeout=SHOW_MS)
        expect(page.locator("#types td").first).to_have_text("echo")
        expect(page.locator("#count-online")).to_have_text("1")
        screenshot(page, tmp_path, "processes")

        page.select_option("select[name=state]", "failed")
        expect(page.locator("#processes tr")).to_have_count(0, timeout=SHOW_MS)
        page.select_option("select[name=state]", "success")
        expect(rows).to_have_count(BURST, timeout=SHOW_MS)
        page.fill("input[name=find]", "burst-7")
        expect(page.locator("#processes tr")).to_have_count(1, timeout=SHOW_MS)

        page.goto(f"{dashboard.url}#/executors")
        row = page.locator('#executors tr[data-name="live-echo"]')
        expect(row.locator(".online")).to_have_text("online", timeout=SHOW_MS)
        expect(row).to_contain_text("approved")
        screenshot(page, tmp_path, "executors")

    chromium.run(body)


def test_a_process_page_follows_its_log_live(
    live_system: Settings, dashboard: Dashboard, chromium: Chromium, page: Any, tmp_path: Path
) -> None:
    def body() -> None:
        client = _client(dashboard)
        executor = on_loop(live_system, connect_executor(live_system, "hand-1", "hand"))
        try:
            submitted = on_loop(live_system, client.submit(_spec("train", "hand")))
            assert isinstance(submitted, Process)
            page.goto(f"{dashboard.url}#/process/{submitted.process_id[:12]}")
            _until_live(page)
            expect(page.locator("#process-state")).to_have_text("waiting", timeout=SHOW_MS)
            # Why it waits, from the broker: the executor of its type has not asked yet.
            expect(page.locator("#why")).to_contain_text("why is this waiting", timeout=SHOW_MS)
            expect(page.locator("#why")).to_contain_text("hand-1")
            screenshot(page, tmp_path, "waiting")

            assigned = on_loop(live_system, executor.assign(timeout=10))
            assert assigned is not None and assigned.process_id == submitted.process_id
            expect(page.locator("#process-state")).to_have_text("running", timeout=SHOW_MS)
            expect(page.locator("#why")).to_be_empty(timeout=SHOW_MS)
            for n in (1, 2, 3):
                on_loop(live_system, executor.add_logs(assigned.process_id, [f"epoch {n} done"]))
                expect(page.locator("#log")).to_contain_text(f"epoch {n} done", timeout=SHOW_MS)
                expect(page.locator("#log-state")).to_have_text("following")
            # What a process writes is shown as text, never run as the page's HTML.
            on_loop(live_system, executor.add_logs(assigned.process_id, [MARKUP]))
            expect(page.locator("#log")).to_contain_text(MARKUP, timeout=SHOW_MS)
            expect(page.locator("#log img")).to_have_count(0)
            on_loop(live_system, executor.close(assigned.process_id, ["model.pt"]))
            expect(page.locator("#process-state")).to_have_text("success", timeout=SHOW_MS)
            expect(page.locator("#log-state")).to_have_text("ended", timeout=SHOW_MS)
            expect(page.locator("#output")).to_contain_text("model.pt")
            expect(page.locator("#history tr")).to_have_count(3)
            expect(page.locator("#log")).to_have_text(
                f"epoch 1 done\nepoch 2 done\nepoch 3 done\n{MARKUP}\n"
            )
            screenshot(page, tmp_path, "process")
        finally:
            on_loop(live_system, executor.aclose())

    chromium.run(body)


def test_a_workflow_graph_turns_green_node_by_node(
    live_system: Settings, dashboard: Dashboard, chromium: Chromium, page: Any, tmp_path: Path
) -> None:
    def body() -> None:
        client = _client(dashboard)
        executor = on_loop(live_system, connect_executor(live_system, "hand-2", "hand"))
        # A diamond: fetch, then clean and count side by side, then report.
        workflow = WorkflowSpec(
            function_specs=[
                _spec("fetch", "hand", node="fetch"),
                _spec("clean", "hand", node="clean", after=("fetch",)),
                _spec("count", "hand", node="count", after=("fetch",)),
                _spec("report", "hand", node="report", after=("clean", "count")),
            ]
        )
        try:
            graph = on_loop(live_system, client.submit_workflow(workflow))
            assert not isinstance(graph, str)
            page.goto(f"{dashboard.url}#/graph/{graph.process_graph_id}")
            _until_live(page)
            node = {n: page.locator(f'g.node[data-node="{n}"]') for n in graph.nodes}
            for n in node.values():
                expect(n).to_have_attribute("data-state", "waiting", timeout=SHOW_MS)
            done: list[str] = []
            for _ in range(len(node)):
                process = on_loop(live_system, executor.assign(timeout=10))
                assert process is not None
                name = process.spec.node_name
                expect(node[name]).to_have_attribute("data-state", "running", timeout=SHOW_MS)
                on_loop(live_system, executor.close(process.process_id, [name]))
                done.append(name)
                expect(node[name]).to_have_attribute("data-state", "success", timeout=SHOW_MS)
                for other in set(node) - set(done):
                    expect(node[other]).to_have_attribute("data-state", "waiting")
                expect(page.locator("#count-success")).to_have_text(str(len(done)), timeout=SHOW_MS)
                if len(done) == 2:
                    screenshot(page, tmp_path, "workflow-halfway")
            assert done[0] == "fetch" and done[-1] == "report"
            expect(page.locator("#graph-state")).to_have_text("success", timeout=SHOW_MS)
            expect(page.locator("#count-success")).to_have_text("4", timeout=SHOW_MS)
            screenshot(page, tmp_path, "workflow")
            page.click('g.node[data-node="report"]')
            expect(page.locator("#process-state")).to_have_text("success", timeout=SHOW_MS)
            page.goto(f"{dashboard.url}#/graphs")
            expect(page.locator(f'#graphs tr[data-id="{graph.process_graph_id}"]')).to_contain_text(
                "success", timeout=SHOW_MS
            )
        finally:
            on_loop(live_system, executor.aclose())

    chromium.run(body)
