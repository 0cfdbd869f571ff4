"""The client's own logic against the fake gateway: batching, watch resumption (no event
missed or repeated across broken streams), wait_for, search results."""

from __future__ import annotations

import uuid

import grpc
import pytest

from fakes import ACCEPTED, INDEXED, Refusal, Running
from sluice_client import (
    AsyncClient,
    Client,
    Document,
    Hit,
    IngestionState,
    InvalidArgument,
    NotFound,
    OutOfRange,
    RetryPolicy,
    Unavailable,
    WaitTimeout,
)
from sluice_client._common import batches
from sluice_client._generated.sluice.v1 import ingest_pb2

FAST = RetryPolicy(max_attempts=5, initial_backoff=0.01, max_backoff=0.02)


def client(fake: Running, **kw: object) -> Client:
    return Client(fake.target, dev_tenant="t", timeout=10, watch_retry=FAST, **kw)  # type: ignore[arg-type]


def ingestion(i: int, state: int) -> ingest_pb2.Ingestion:
    return ingest_pb2.Ingestion(ingestion_id=f"ing-{i}", document_id=f"doc-{i}", state=state)  # type: ignore[arg-type]


def test_batches_split_by_count_and_bytes_in_order() -> None:
    docs = [(f"d{i}", {"text": "x" * 100}) for i in range(25)]
    by_count = list(batches(docs, 10, 1 << 20))
    assert [len(b) for b in by_count] == [10, 10, 5]
    assert [d.document_id for b in by_count for d in b] == [f"d{i}" for i in range(25)]
    by_bytes = list(batches(docs, 100, 3 * 130))
    assert all(len(b) <= 3 for b in by_bytes) and sum(len(b) for b in by_bytes) == 25
    # One document larger than the limit goes alone.
    assert [len(b) for b in batches([("big", {"text": "y" * 1000}), ("s", {"text": ""})], 10, 100)] == [1, 1]


def test_ingest_many_calls_ingest_batch_per_batch_with_a_key_each(fake: Running) -> None:
    docs: list[Document | tuple[str, dict[str, object]]] = [Document(f"d{i}", {"text": str(i)}, {"k": "v"}) for i in range(7)]
    docs.append(("pair", {"text": "a pair"}))
    with client(fake, batch_size=3) as sluice:
        ingestions = sluice.ingest_many(docs)
    assert fake.fake.batch_sizes == [3, 3, 2]
    assert [i.document_id for i in ingestions] == [f"d{i}" for i in range(7)] + ["pair"]
    assert len(set(fake.fake.write_keys)) == 3


def test_a_failed_batch_reports_what_was_accepted_before_it(fake: Running) -> None:
    fake.fake.refusals = [None, Refusal(grpc.StatusCode.INVALID_ARGUMENT, "bad", fields=[("documents[1].document_id", "bad")])]
    with client(fake, batch_size=2) as sluice, pytest.raises(InvalidArgument) as raised:
        sluice.ingest_many([(name, {"text": ""}) for name in "abcde"])
    assert [i.document_id for i in raised.value.accepted] == ["a", "b"]
    assert raised.value.field_violations[0].field == "documents[1].document_id"
    assert fake.fake.batch_sizes == [2, 2]


def test_get_ingestion(fake: Running) -> None:
    fake.fake.add_events(ingestion(1, ACCEPTED), ingestion(1, INDEXED))
    with client(fake) as sluice:
        assert sluice.get_ingestion("ing-1").state is IngestionState.INDEXED
        with pytest.raises(NotFound):
            sluice.get_ingestion("ing-2")


def test_watch_resumes_after_each_broken_stream_with_no_event_missed_or_repeated(fake: Running) -> None:
    for i in range(30):
        fake.fake.add_events(ingestion(i, ACCEPTED))
    for i in range(30):
        fake.fake.add_events(ingestion(i, INDEXED))
    fake.fake.break_every, fake.fake.breaks = 7, 100
    with client(fake) as sluice:
        events = []
        watch = sluice.watch(after_cursor="0")
        for event in watch:
            events.append(event)
            if len(events) == 60:
                break
    assert [e.cursor for e in events] == [str(n) for n in range(1, 61)]
    assert [(e.ingestion.ingestion_id, e.ingestion.state) for e in events] == [
        (f"ing-{i}", IngestionState.ACCEPTED) for i in range(30)
    ] + [(f"ing-{i}", IngestionState.INDEXED) for i in range(30)]
    # Each new stream asked for the events after the last one received.
    cursors = [r.after_cursor for r in fake.fake.watch_requests]
    assert cursors[:4] == ["0", "7", "14", "21"]


def test_watching_ids_restarts_a_broken_snapshot_and_hands_out_each_state_once(fake: Running) -> None:
    for i in range(5):
        fake.fake.add_events(ingestion(i, ACCEPTED))
    for i in range(3):
        fake.fake.add_events(ingestion(i, INDEXED))
    ids = [f"ing-{i}" for i in range(5)]
    fake.fake.break_every, fake.fake.breaks = 2, 1  # the first stream breaks inside the snapshot

    def more_events() -> None:
        for i in range(3, 5):
            fake.fake.add_events(ingestion(i, INDEXED))

    with client(fake) as sluice:
        seen = []
        for event in sluice.watch(ids):
            seen.append((event.ingestion.ingestion_id, event.ingestion.state))
            if len(seen) == 2:
                more_events()
    # The snapshot said ing-0 and ing-1 were INDEXED; the new snapshot repeats them (dropped)
    # and shows the rest as they are now.
    assert sorted(seen) == sorted({(i, IngestionState.INDEXED) for i in ids})
    assert len(seen) == len(set(seen)) == 5
    assert [r.after_cursor for r in fake.fake.watch_requests] == ["", ""]


def test_watch_gives_up_after_its_attempts_in_a_row(fake: Running) -> None:
    fake.fake.watch_refusal = Refusal(grpc.StatusCode.UNAVAILABLE, "down", retry_delay=0.001)
    with client(fake) as sluice, pytest.raises(Unavailable):
        list(sluice.watch())
    assert len(fake.fake.watch_requests) == FAST.max_attempts


def test_an_expired_cursor_is_out_of_range_at_once(fake: Running) -> None:
    fake.fake.watch_refusal = Refusal(grpc.StatusCode.OUT_OF_RANGE, "the events after this cursor are older than the gateway keeps")
    with client(fake) as sluice, pytest.raises(OutOfRange):
        next(sluice.watch(after_cursor="1"))
    assert len(fake.fake.watch_requests) == 1


def test_wait_for_returns_each_ingestion_as_it_ended(fake: Running) -> None:
    for i in range(4):
        fake.fake.add_events(ingestion(i, ACCEPTED), ingestion(i, INDEXED))
    with client(fake, batch_size=3) as sluice:
        ended = sluice.wait_for([f"ing-{i}" for i in (3, 0, 1, 2, 0)])
    assert list(ended) == ["ing-3", "ing-0", "ing-1", "ing-2"]
    assert all(i.state is IngestionState.INDEXED and i.finished for i in ended.values())
    assert [len(r.ingestion_ids) for r in fake.fake.watch_requests] == [3, 1]


def test_wait_for_times_out_with_what_finished(fake: Running) -> None:
    fake.fake.add_events(ingestion(0, ACCEPTED), ingestion(0, INDEXED), ingestion(1, ACCEPTED))
    # The fake ends a stream once its log is sent; a real gateway waits. Either way ing-1 never ends.
    slow = RetryPolicy(max_attempts=1000, initial_backoff=0.05, max_backoff=0.05)
    with Client(fake.target, dev_tenant="t", watch_retry=slow) as sluice, pytest.raises(WaitTimeout) as raised:
        sluice.wait_for(["ing-0", "ing-1"], timeout=0.5)
    assert list(raised.value.finished) == ["ing-0"] and raised.value.pending == ["ing-1"]


def test_search_returns_typed_hits(fake: Running) -> None:
    with client(fake) as sluice:
        hits = sluice.search("tides", top_k=2, filters={"kind": "sample"})
    assert hits == [
        Hit("d0", 0, "tides", 1.0, {"kind": "sample"}),
        Hit("d1", 1, "tides", pytest.approx(0.9), {"kind": "sample"}),  # type: ignore[arg-type]
    ]


async def test_async_watch_resumes_too(fake: Running) -> None:
    for i in range(20):
        fake.fake.add_events(ingestion(i, ACCEPTED))
    fake.fake.break_every, fake.fake.breaks = 3, 100
    async with AsyncClient(fake.target, dev_tenant="t", watch_retry=FAST) as sluice:
        cursors = []
        async for event in sluice.watch(after_cursor="0"):
            cursors.append(event.cursor)
            if len(cursors) == 20:
                break
    assert cursors == [str(n) for n in range(1, 21)]


async def test_async_ingest_many_and_wait_for(fake: Running) -> None:
    async with AsyncClient(fake.target, dev_tenant="t", watch_retry=FAST, batch_size=2) as sluice:
        accepted = await sluice.ingest_many([(f"d{i}", {"text": str(i)}) for i in range(3)])
        for a in accepted:
            fake.fake.add_events(ingest_pb2.Ingestion(ingestion_id=a.ingestion_id, document_id=a.document_id, state=INDEXED))
        ended = await sluice.wait_for([a.ingestion_id for a in accepted])
    assert fake.fake.batch_sizes == [2, 1]
    assert [e.document_id for e in ended.values()] == ["d0", "d1", "d2"]
    assert uuid.UUID(accepted[0].ingestion_id)
