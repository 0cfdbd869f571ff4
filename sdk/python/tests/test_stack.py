"""Against a real local stack (tests/stack.py): the example, the clients' calls and errors as
the gateway sends them, quotas with RetryInfo, and a watch that outlives gateway restarts.

Skipped when the broker, the binaries or the model are missing, unless
SLUICE_SDK_REQUIRE_STACK=1 (sdk/python/check sets it): then that is a failure.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice_client import (
    AsyncClient,
    Client,
    Document,
    FailedPrecondition,
    Hit,
    IngestionEvent,
    IngestionState,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    RetryPolicy,
)
from stack import LocalStack, find_tools

SDK = Path(__file__).resolve().parent.parent
SAMPLES = json.loads((SDK.parent.parent / "deploy/dev/samples.json").read_text())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    tools = find_tools()
    if isinstance(tools, str):
        if os.environ.get("SLUICE_SDK_REQUIRE_STACK") == "1":
            pytest.fail(f"the local stack cannot start: {tools}")
        pytest.skip(tools)
    running = LocalStack(tools, tmp_path_factory.mktemp("stack"))
    try:
        running.start()
        yield running
    finally:
        running.close()
        print(f"sluice.log ({running.gateway_starts} start(s)):\n{running.log_tail(15)}")


def connect(stack: LocalStack, **options: object) -> Client:
    return Client.from_directory(stack.target, stack.tls, stack.tenant, **options)  # type: ignore[arg-type]


def test_the_example_ingests_a_folder_watches_and_searches(stack: LocalStack, tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    for sample in SAMPLES:
        (folder / f"{sample['id']}.txt").write_text(f"{sample['title']}\n\n{sample['text']}\n")
    result = subprocess.run(
        [sys.executable, str(SDK / "examples/ingest_folder.py"), str(folder),
         "--target", stack.target, "--certs", str(stack.tls), "--tenant", stack.tenant,
         "--query", "how do glaciers shape the land"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr + stack.log_tail()
    assert f"indexed {len(SAMPLES)} of {len(SAMPLES)}" in result.stdout
    hits = [line.split() for line in result.stdout.splitlines() if line.startswith("  0.")]
    glacier = next(s["id"] for s in SAMPLES if "lacier" in s["title"])
    assert hits and hits[0][1] == f"{glacier}.txt", result.stdout


def test_ingest_search_delete_and_schemas(stack: LocalStack) -> None:
    with connect(stack) as sluice:
        ingestion = sluice.ingest(
            "tides", {"title": "Tides", "text": "The moon pulls the sea twice a day."}, attributes={"kind": "note"}, wait=True
        )
        assert ingestion.state is IngestionState.INDEXED and ingestion.chunk_count >= 1
        assert ingestion.completed_at is not None and ingestion.accepted_at is not None
        assert sluice.get_ingestion(ingestion.ingestion_id) == ingestion
        hits = sluice.search("what moves the tides", top_k=3, filters={"kind": "note"})
        assert hits and isinstance(hits[0], Hit) and hits[0].document_id == "tides"
        assert hits[0].attributes["kind"] == "note" and hits[0].attributes["title"] == "Tides"

        # A schema of the tenant's own; strict Avro JSON (tagged unions) from its definition.
        definition = {
            "type": "record", "name": "Article", "namespace": "com.example",
            "fields": [{"name": "headline", "type": "string", "sluice.role": "attribute"},
                       {"name": "body", "type": "string", "sluice.role": "text"},
                       {"name": "pages", "type": ["null", "int", "string"], "default": None}],
        }  # fmt: skip
        schema = sluice.register_schema("article", definition)
        assert schema.version == 1 and schema.text_field == "body" and "article" in sluice.list_schemas()
        article = sluice.ingest(
            "a-1", {"headline": "Ebb", "body": "The sea withdraws.", "pages": 3},
            schema="article", avro_schema=sluice.get_schema("article").definition, wait=True,
        )  # fmt: skip
        assert article.state is IngestionState.INDEXED
        incompatible = dict(definition, fields=[*definition["fields"], {"name": "isbn", "type": "string"}])
        with pytest.raises(FailedPrecondition) as refused:
            sluice.register_schema("article", incompatible)
        assert refused.value.precondition_violations and refused.value.precondition_violations[0].type == "COMPATIBILITY"

        deleted = sluice.delete("tides", wait=True)
        assert deleted.state is IngestionState.DELETED
        assert not [h for h in sluice.search("what moves the tides", top_k=5) if h.document_id == "tides"]


def test_errors_carry_the_gateways_details(stack: LocalStack) -> None:
    with connect(stack) as sluice:
        with pytest.raises(InvalidArgument) as bad:
            sluice.ingest_many([("ok", {"text": "fine"}), ("bad", {"text": 5, "tags": ["a", 1]})])
        fields = {v.field for v in bad.value.field_violations}
        assert fields == {"documents[1].avro_json.text", "documents[1].avro_json.tags[1]"}, bad.value
        with pytest.raises(NotFound):
            sluice.get_ingestion("no-such-ingestion")


def test_quotas_are_waited_out_when_retry_info_says_so(stack: LocalStack, caplog: pytest.LogCaptureFixture) -> None:
    stack.admin("tenant", "create", "tight", "--name", "Tight quotas")
    stack.admin("tenant", "quotas", "tight", "--documents-per-second", "5", "--max-top-k", "2")
    certs = stack.root / "tight-certs"
    stack.admin("cert", "client", "tight", "--ca-dir", str(stack.tls), "--out", str(certs))
    caplog.set_level(logging.INFO, logger="sluice_client")
    # This directory has no ca.pem (cert client --out writes only the pair): name the CA.
    with Client.from_directory(stack.target, certs, ca=stack.tls / "ca.pem") as sluice:
        deadline = time.monotonic() + 10  # the gateway picks registry changes up within a second or so
        while True:
            try:
                sluice.search("anything", top_k=3)
            except PermissionDenied:
                pass  # the new tenant is not known yet
            except ResourceExhausted as e:
                assert e.quota_violations[0].subject == "max_top_k" and e.retry_delay is None
                break
            assert time.monotonic() < deadline, "the max_top_k quota did not take effect"
            time.sleep(0.5)
        started = time.monotonic()
        for n in range(3):  # 15 documents at 5 a second: RESOURCE_EXHAUSTED with RetryInfo, waited out
            accepted = sluice.ingest_many([(f"q-{n}-{i}", {"text": f"quota {n} {i}"}) for i in range(5)])
            assert len(accepted) == 5
        assert time.monotonic() - started >= 1.0
        assert any("RESOURCE_EXHAUSTED" in r.getMessage() and "retrying" in r.getMessage() for r in caplog.records), "no retry?"
        with pytest.raises(ResourceExhausted) as too_big:  # over a second's worth: no RetryInfo, no retry
            sluice.ingest_many([(f"big-{i}", {"text": "x"}) for i in range(6)])
        assert too_big.value.retry_delay is None and too_big.value.quota_violations[0].subject == "documents_per_second"


def test_async_client(stack: LocalStack) -> None:
    async def run() -> None:
        async with AsyncClient.from_directory(stack.target, stack.tls, stack.tenant) as sluice:
            ended = await sluice.ingest_many(
                [Document(f"async-{i}", {"text": f"Asynchronous note number {i} about rivers."}) for i in range(4)], wait=True
            )
            assert [e.state for e in ended] == [IngestionState.INDEXED] * 4
            events = [e async for e in sluice.watch([e.ingestion_id for e in ended])]
            assert {e.ingestion.ingestion_id for e in events} == {e.ingestion_id for e in ended}
            hits = await sluice.search("rivers", top_k=2)
            assert hits and hits[0].document_id.startswith("async-")

    asyncio.run(run())


DOCS = 60  # in six batches of ten: three before the first restart, two during it, one before the second


def test_watch_resumes_across_gateway_restarts_with_no_event_missed_or_repeated(
    stack: LocalStack, caplog: pytest.LogCaptureFixture
) -> None:
    """Two watchers (sync and asyncio) follow the tenant's events from a cursor while 60
    documents are ingested and the gateway is stopped twice: gracefully (SIGTERM) while
    documents are being written, then killed (SIGKILL) while the last batch is being indexed.
    Each watcher must see exactly the 120 events (ACCEPTED, then INDEXED, per document), in
    cursor order, once each, and must have resumed at both stops."""
    patient = RetryPolicy(max_attempts=60, initial_backoff=0.1, max_backoff=1.0)
    caplog.set_level(logging.INFO, logger="sluice_client")
    with connect(stack) as sluice:
        seed = sluice.ingest("seed", {"text": "Where the watch starts."}, wait=True)
        start = [e.cursor for e in sluice.watch([seed.ingestion_id])][-1]

    expected = 2 * DOCS
    sync_events: list[IngestionEvent] = []
    async_events: list[IngestionEvent] = []
    failures: list[BaseException] = []

    def watch_sync() -> None:
        try:
            with connect(stack, watch_retry=patient) as watcher:
                for event in watcher.watch(after_cursor=start, timeout=240):
                    sync_events.append(event)
                    if len(sync_events) == expected:
                        return
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            failures.append(e)

    def watch_async() -> None:
        async def run() -> None:
            async with AsyncClient.from_directory(stack.target, stack.tls, stack.tenant, watch_retry=patient) as watcher:
                async for event in watcher.watch(after_cursor=start, timeout=240):
                    async_events.append(event)
                    if len(async_events) == expected:
                        return

        try:
            asyncio.run(run())
        except BaseException as e:  # noqa: BLE001
            failures.append(e)

    watchers = [threading.Thread(target=watch_sync), threading.Thread(target=watch_async)]
    for w in watchers:
        w.start()
    time.sleep(1)  # both streams open

    writer = connect(stack, retry=patient, timeout=120)
    ids: list[str] = []

    def ingest(*batches: int) -> None:
        for batch in batches:
            docs = [(f"resume-{batch}-{i}", {"text": f"Resume test document {batch}.{i}: the tide turns."}) for i in range(10)]
            ids.extend(i.ingestion_id for i in writer.ingest_many(docs))

    def wait_until(condition: str, check: object) -> None:
        deadline = time.monotonic() + 120
        while not check():  # type: ignore[operator]
            assert not failures, failures
            assert time.monotonic() < deadline, f"timed out waiting until {condition}; {len(sync_events)} events"
            time.sleep(0.05)

    phases: list[tuple[str, float]] = [("start", time.monotonic())]
    ingest(0, 1, 2)
    wait_until("the watchers are mid-way", lambda: len(sync_events) >= 20 and len(async_events) >= 20)
    phases.append(("30 documents in, watchers mid-way", time.monotonic()))
    # Graceful: streams end UNAVAILABLE; the batches written meanwhile are retried (same key).
    writing = threading.Thread(target=ingest, args=(3, 4))
    writing.start()
    stack.stop_gateway()
    time.sleep(0.5)
    stack.start_gateway()
    phases.append(("SIGTERM, restarted", time.monotonic()))
    writing.join(120)
    assert not writing.is_alive()
    # Both watchers resumed on the new instance before it is killed.
    wait_until("the watchers resumed", lambda: min(len(sync_events), len(async_events)) >= 2 * 50)
    phases.append(("50 documents in, watchers resumed", time.monotonic()))
    # Killed right after a batch is accepted, while it is being indexed: connections reset,
    # the worker redoes its open transaction.
    ingest(5)
    assert stack.gateway is not None
    stack.gateway.kill()
    stack.gateway.wait(10)
    at_kill = (len(sync_events), len(async_events))
    time.sleep(0.5)
    stack.start_gateway()
    phases.append(("SIGKILL, restarted", time.monotonic()))
    writer.close()
    assert max(at_kill) < expected, f"indexing finished before the kill: {at_kill}"

    for w in watchers:
        w.join(240)
    phases.append(("watchers done", time.monotonic()))
    print(", ".join(f"{name} +{at - phases[0][1]:.1f} s" for name, at in phases[1:]))
    assert not failures, failures
    assert len(ids) == DOCS == len(set(ids))
    for name, events in (("sync", sync_events), ("async", async_events)):
        assert len(events) == expected, f"{name}: {len(events)} events"
        cursors = [int(e.cursor) for e in events]
        assert cursors == sorted(cursors) and len(set(cursors)) == expected, f"{name}: cursors out of order or repeated"
        seen = [(e.ingestion.ingestion_id, e.ingestion.state) for e in events]
        assert len(set(seen)) == expected, f"{name}: an event was repeated"
        assert set(seen) == {(i, s) for i in ids for s in (IngestionState.ACCEPTED, IngestionState.INDEXED)}, name
        for i in ids:
            assert seen.index((i, IngestionState.ACCEPTED)) < seen.index((i, IngestionState.INDEXED))
    assert stack.gateway_starts == 3
    # Each watcher's stream really broke, at both restarts: it resumed from two cursors at least.
    for source in ("_client.py", "_aio.py"):
        resumed = {
            m.group(1)
            for r in caplog.records
            if r.filename == source and (m := re.search(r"resuming after cursor '(\d+)'", r.getMessage()))
        }
        assert len(resumed) >= 2, f"{source} resumed after {resumed}"
    with connect(stack) as sluice:
        assert all(i.state is IngestionState.INDEXED for i in sluice.wait_for(ids, timeout=60).values())
