"""The asyncio client: ``Client``'s API, each call awaited (grpc.aio)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import grpc.aio

from ._common import (
    ClientOptions,
    DocumentLike,
    WaitTimeout,
    WatchState,
    batches,
    chunks,
    document_message,
    log,
    new_key,
    settings,
    watch_error,
)
from ._errors import DeadlineExceeded, SluiceError, Unavailable, error_from_rpc
from ._generated.sluice.v1 import ingest_pb2, ingest_pb2_grpc, schema_pb2, schema_pb2_grpc, search_pb2, search_pb2_grpc
from ._retry import deadline_after, remaining
from ._tls import StrPath, TlsCredentials
from ._types import Document, Hit, Ingestion, IngestionEvent, Schema

if TYPE_CHECKING:
    from typing_extensions import Unpack

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


class AsyncClient:
    """``Client`` for asyncio: the same methods, awaited; ``watch`` is an async iterator.

    >>> async with AsyncClient.from_directory("127.0.0.1:50051", ".sluice/dev/tls", "demo") as sluice:
    ...     await sluice.ingest("note-1", {"text": "Tides follow the moon."}, wait=True)

    Make it inside the event loop that uses it.
    """

    def __init__(self, target: str, credentials: TlsCredentials | None = None, **options: Unpack[ClientOptions]) -> None:
        self._settings = settings(target, credentials, options)
        channel_options = self._settings.options
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(target, options=channel_options)
        else:
            self._channel = grpc.aio.secure_channel(target, credentials.channel_credentials(), options=channel_options)
        self._ingest = ingest_pb2_grpc.IngestServiceStub(self._channel)
        self._search = search_pb2_grpc.SearchServiceStub(self._channel)
        self._schemas = schema_pb2_grpc.SchemaServiceStub(self._channel)

    @classmethod
    def from_files(
        cls, target: str, cert: StrPath, key: StrPath, ca: StrPath | None = None, **options: Unpack[ClientOptions]
    ) -> AsyncClient:
        """Connects with a client certificate and key, and the gateway's CA, from PEM files."""
        return cls(target, TlsCredentials.from_files(cert, key, ca), **options)

    @classmethod
    def from_directory(
        cls,
        target: str,
        directory: StrPath,
        tenant: str | None = None,
        *,
        ca: StrPath | None = None,
        **options: Unpack[ClientOptions],
    ) -> AsyncClient:
        """Connects with the certificate ``sluice-admin cert client TENANT --out DIRECTORY`` wrote."""
        return cls(target, TlsCredentials.from_directory(directory, tenant, ca), **options)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def _timeout(self, timeout: float | None, wait: bool = False) -> float | None:
        if timeout is not None:
            return timeout
        return self._settings.wait_timeout if wait else self._settings.timeout

    async def _call(
        self, method: grpc.aio.UnaryUnaryMultiCallable[_Req, _Resp], request: _Req, timeout: float | None
    ) -> _Resp:
        deadline = deadline_after(timeout)
        attempt = 0
        while True:
            attempt += 1
            try:
                return await method(request, timeout=remaining(deadline), metadata=self._settings.metadata)
            except grpc.RpcError as rpc_error:
                error, cause = error_from_rpc(rpc_error), rpc_error
            delay = self._settings.retry.next_delay(error, attempt, deadline)
            if delay is None:
                raise error from cause
            log.info("%s (attempt %d); retrying in %.2f s", error, attempt, delay)
            await asyncio.sleep(delay)

    async def ingest(
        self,
        document_id: str,
        fields: Mapping[str, Any],
        *,
        attributes: Mapping[str, str] | None = None,
        schema: str = "",
        schema_version: int = 0,
        avro_schema: str | Mapping[str, Any] | None = None,
        wait: bool = False,
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> Ingestion:
        """As ``Client.ingest``."""
        document = Document(document_id, fields, dict(attributes or {}), schema, schema_version, avro_schema)
        request = ingest_pb2.IngestRequest(
            document=document_message(document), idempotency_key=idempotency_key or new_key(), wait=wait
        )
        response = await self._call(self._ingest.Ingest, request, self._timeout(timeout, wait))
        return Ingestion.from_proto(response.ingestion)

    async def ingest_many(
        self,
        documents: Iterable[DocumentLike],
        *,
        batch_size: int | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> list[Ingestion]:
        """As ``Client.ingest_many``."""
        size = batch_size or self._settings.batch_size
        accepted: list[Ingestion] = []
        for batch in batches(documents, size, self._settings.max_batch_bytes):
            request = ingest_pb2.IngestBatchRequest(documents=batch, idempotency_key=new_key())
            try:
                response = await self._call(self._ingest.IngestBatch, request, self._timeout(timeout))
            except SluiceError as error:
                error.accepted = tuple(accepted)
                raise
            accepted += (Ingestion.from_proto(i) for i in response.ingestions)
        if not wait:
            return accepted
        ended = await self.wait_for([i.ingestion_id for i in accepted], timeout=timeout)
        return [ended[i.ingestion_id] for i in accepted]

    async def delete(self, document_id: str, *, wait: bool = False, timeout: float | None = None) -> Ingestion:
        """As ``Client.delete``."""
        request = ingest_pb2.DeleteDocumentRequest(document_id=document_id, idempotency_key=new_key(), wait=wait)
        response = await self._call(self._ingest.DeleteDocument, request, self._timeout(timeout, wait))
        return Ingestion.from_proto(response.ingestion)

    async def get_ingestion(self, ingestion_id: str, *, timeout: float | None = None) -> Ingestion:
        request = ingest_pb2.GetIngestionRequest(ingestion_id=ingestion_id)
        return Ingestion.from_proto(await self._call(self._ingest.GetIngestion, request, self._timeout(timeout)))

    def watch(
        self,
        ingestion_ids: Iterable[str] | None = None,
        after_cursor: str | None = None,
        *,
        timeout: float | None = None,
    ) -> AsyncIterator[IngestionEvent]:
        """As ``Client.watch``, an async iterator (close it with ``contextlib.aclosing``)."""
        return self._watch(WatchState(ingestion_ids, after_cursor), deadline_after(timeout))

    async def _watch(self, state: WatchState, deadline: float | None) -> AsyncIterator[IngestionEvent]:
        failures = 0
        while True:
            call = self._ingest.WatchIngestions(
                state.request(), timeout=remaining(deadline), metadata=self._settings.metadata
            )
            cause: BaseException | None = None
            try:
                async for message in call:
                    failures = 0
                    event = state.accept(message)
                    if event is not None:
                        yield event
                if state.done:
                    return
                error: SluiceError = Unavailable(grpc.StatusCode.UNAVAILABLE, "the watch stream ended early")
            except grpc.RpcError as rpc_error:
                error, cause = error_from_rpc(rpc_error), rpc_error
            finally:
                call.cancel()
            failures += 1
            delay = self._settings.watch_retry.next_delay(error, failures, deadline)
            if delay is None:
                raise watch_error(self._settings.watch_retry, error, failures) from cause
            log.info("watch stream broke (%s); resuming after cursor %r in %.2f s", error, state.cursor, delay)
            await asyncio.sleep(delay)

    async def wait_for(self, ingestion_ids: Iterable[str], timeout: float | None = None) -> dict[str, Ingestion]:
        """As ``Client.wait_for``."""
        ids = list(dict.fromkeys(ingestion_ids))
        deadline = deadline_after(self._timeout(timeout, wait=True))
        finished: dict[str, Ingestion] = {}
        for group in chunks(ids, self._settings.batch_size):
            state = WatchState(group, None)
            try:
                async for _ in self._watch(state, deadline):
                    pass
            except DeadlineExceeded:
                finished.update(state.finished)
                raise WaitTimeout(finished, [i for i in ids if i not in finished]) from None
            finished.update(state.finished)
        return {i: finished[i] for i in ids}

    async def search(
        self, query: str, top_k: int = 10, filters: Mapping[str, str] | None = None, *, timeout: float | None = None
    ) -> list[Hit]:
        """As ``Client.search``."""
        request = search_pb2.SearchRequest(query=query, top_k=top_k, attribute_filter=dict(filters or {}))
        response = await self._call(self._search.Search, request, self._timeout(timeout))
        return [Hit.from_proto(hit) for hit in response.hits]

    async def register_schema(
        self, name: str, definition: str | Mapping[str, Any], *, timeout: float | None = None
    ) -> Schema:
        text = definition if isinstance(definition, str) else json.dumps(definition)
        request = schema_pb2.RegisterSchemaRequest(name=name, definition=text)
        response = await self._call(self._schemas.RegisterSchema, request, self._timeout(timeout))
        return Schema.from_proto(response.schema)

    async def get_schema(self, name: str, version: int = 0, *, timeout: float | None = None) -> Schema:
        request = schema_pb2.GetSchemaRequest(name=name, version=version)
        return Schema.from_proto(await self._call(self._schemas.GetSchema, request, self._timeout(timeout)))

    async def list_schemas(self, *, timeout: float | None = None) -> list[str]:
        request = schema_pb2.ListSchemasRequest()
        return list((await self._call(self._schemas.ListSchemas, request, self._timeout(timeout))).names)
