"""The retry policy, alone and over the wire (fake gateway): bounded, honouring RetryInfo,
one idempotency key per write."""

from __future__ import annotations

import time

import grpc
import pytest

from fakes import Refusal, Running
from sluice_client import (
    NO_RETRY,
    Aborted,
    AsyncClient,
    Client,
    InvalidArgument,
    ResourceExhausted,
    RetryPolicy,
    SluiceError,
    Unavailable,
)

U = grpc.StatusCode.UNAVAILABLE


def err(code: grpc.StatusCode, retry_delay: float | None = None) -> SluiceError:
    return SluiceError(code, "x", retry_delay=retry_delay)


def test_which_codes_are_retried() -> None:
    policy = RetryPolicy()
    assert policy.retries(err(U), 1)
    assert policy.retries(err(grpc.StatusCode.ABORTED), 1)
    assert policy.retries(err(grpc.StatusCode.RESOURCE_EXHAUSTED, 0.5), 1)
    # Without RetryInfo the gateway says waiting will not help (a too-large request or batch).
    assert not policy.retries(err(grpc.StatusCode.RESOURCE_EXHAUSTED), 1)
    for code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.DEADLINE_EXCEEDED,
                 grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.FAILED_PRECONDITION):  # fmt: skip
        assert not policy.retries(err(code, 1.0), 1)


def test_attempts_are_bounded() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert policy.retries(err(U), 2) and not policy.retries(err(U), 3)
    assert not NO_RETRY.retries(err(U), 1)
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_backoff_grows_is_capped_and_jittered() -> None:
    policy = RetryPolicy(initial_backoff=0.1, multiplier=2, max_backoff=1.0)
    low = [policy.backoff(err(U), n, rand=lambda: 0.0) for n in range(1, 7)]
    high = [policy.backoff(err(U), n, rand=lambda: 1.0) for n in range(1, 7)]
    assert high == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert low == pytest.approx([h / 2 for h in high])


def test_retry_info_is_a_floor_with_jitter_above_it() -> None:
    policy = RetryPolicy(max_backoff=0.5, jitter=0.2)
    assert policy.backoff(err(U, 3.0), 1, rand=lambda: 0.0) == pytest.approx(3.0)
    assert policy.backoff(err(U, 3.0), 1, rand=lambda: 1.0) == pytest.approx(3.6)


def test_no_retry_past_the_deadline() -> None:
    policy = RetryPolicy()
    now = lambda: 100.0  # noqa: E731
    assert policy.next_delay(err(U, 1.0), 1, deadline=100.5, now=now, rand=lambda: 0.0) is None
    assert policy.next_delay(err(U, 1.0), 1, deadline=102.0, now=now, rand=lambda: 0.0) == pytest.approx(1.0)
    assert policy.next_delay(err(U, 1.0), 1, deadline=None, now=now, rand=lambda: 0.0) == pytest.approx(1.0)


def client(fake: Running, **kw: object) -> Client:
    return Client(fake.target, dev_tenant="t", timeout=10, **kw)  # type: ignore[arg-type]


def test_ingest_retries_with_one_key_and_writes_once(fake: Running) -> None:
    fake.fake.refusals = [
        Refusal(grpc.StatusCode.ABORTED, "transaction aborted; nothing was written, retry", retry_delay=0.1),
        Refusal(grpc.StatusCode.UNAVAILABLE, "Kafka is unavailable", retry_delay=0.1),
    ]
    with client(fake) as sluice:
        started = time.monotonic()
        ingestion = sluice.ingest("doc-1", {"text": "hello"})
        elapsed = time.monotonic() - started
    assert ingestion.document_id == "doc-1"
    keys = fake.fake.write_keys
    assert len(keys) == 3 and len(set(keys)) == 1 and keys[0].startswith("py-")
    assert fake.fake.writes == 1
    assert elapsed >= 0.2  # both RetryInfo delays were waited out


def test_a_repeated_call_with_the_same_key_is_not_a_second_write(fake: Running) -> None:
    with client(fake) as sluice:
        first = sluice.ingest("doc-1", {"text": "hello"}, idempotency_key="mine-1")
        again = sluice.ingest("doc-1", {"text": "hello"}, idempotency_key="mine-1")
        other = sluice.ingest("doc-1", {"text": "hello"})
    assert first.ingestion_id == again.ingestion_id != other.ingestion_id
    assert fake.fake.writes == 2


def test_quota_without_retry_info_fails_at_once_with_the_quota(fake: Running) -> None:
    fake.fake.refusals = [Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, "batch over a second of documents_per_second", quota="documents_per_second")]
    with client(fake) as sluice, pytest.raises(ResourceExhausted) as raised:
        sluice.ingest("doc-1", {"text": "hello"})
    assert len(fake.fake.write_keys) == 1
    assert raised.value.quota_violations[0].subject == "documents_per_second"


def test_gives_up_after_max_attempts_with_the_last_error(fake: Running) -> None:
    fake.fake.refusals = [Refusal(grpc.StatusCode.ABORTED, "aborted", retry_delay=0.01)] * 10
    with client(fake, retry=RetryPolicy(max_attempts=3)) as sluice, pytest.raises(Aborted) as raised:
        sluice.ingest("doc-1", {"text": "hello"})
    assert len(fake.fake.write_keys) == 3 and raised.value.retry_delay == pytest.approx(0.01)


def test_invalid_argument_is_not_retried(fake: Running) -> None:
    fake.fake.refusals = [Refusal(grpc.StatusCode.INVALID_ARGUMENT, "bad", fields=[("document.document_id", "required")])]
    with client(fake) as sluice, pytest.raises(InvalidArgument) as raised:
        sluice.ingest("", {"text": "hello"})
    assert raised.value.field_violations[0].field == "document.document_id"
    assert len(fake.fake.write_keys) == 1


def test_a_gateway_that_is_not_there_is_unavailable_after_bounded_tries() -> None:
    from stack import free_port

    policy = RetryPolicy(max_attempts=3, initial_backoff=0.05)
    with Client(f"127.0.0.1:{free_port()}", dev_tenant="t", retry=policy, timeout=5) as sluice:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            sluice.search("anything")
        assert time.monotonic() - started < 5


async def test_async_ingest_retries_with_one_key(fake: Running) -> None:
    fake.fake.refusals = [Refusal(grpc.StatusCode.UNAVAILABLE, "down", retry_delay=0.05)]
    async with AsyncClient(fake.target, dev_tenant="t", timeout=10) as sluice:
        ingestion = await sluice.ingest("doc-1", {"text": "hello"})
    assert ingestion.document_id == "doc-1"
    assert len(fake.fake.write_keys) == 2 and len(set(fake.fake.write_keys)) == 1
    assert fake.fake.writes == 1
