"""An in-process stand-in for the gateway, scripted per test: refusals with google.rpc details,
an idempotency store, and watch streams that break on cue. Plaintext on loopback."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from sluice_client._generated.sluice.v1 import ingest_pb2, ingest_pb2_grpc, search_pb2, search_pb2_grpc

ACCEPTED = ingest_pb2.INGESTION_STATE_ACCEPTED
INDEXED = ingest_pb2.INGESTION_STATE_INDEXED


@dataclass
class Refusal:
    code: grpc.StatusCode
    message: str
    retry_delay: float | None = None
    quota: str | None = None
    fields: list[tuple[str, str]] = field(default_factory=list)

    def status(self) -> status_pb2.Status:
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        details: list[object] = []
        if self.fields:
            details.append(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in self.fields
                    ]
                )
            )
        if self.quota:
            details.append(
                error_details_pb2.QuotaFailure(
                    violations=[error_details_pb2.QuotaFailure.Violation(subject=self.quota, description="over")]
                )
            )
        if self.retry_delay is not None:
            info = error_details_pb2.RetryInfo()
            info.retry_delay.FromNanoseconds(int(self.retry_delay * 1e9))
            details.append(info)
        for detail in details:
            packed = any_pb2.Any()
            packed.Pack(detail)  # type: ignore[arg-type]
            status.details.append(packed)
        return status


def abort(context: grpc.ServicerContext, refusal: Refusal) -> None:
    context.set_trailing_metadata((("grpc-status-details-bin", refusal.status().SerializeToString()),))
    context.abort(refusal.code, refusal.message)


class FakeGateway(ingest_pb2_grpc.IngestServiceServicer, search_pb2_grpc.SearchServiceServicer):
    """Answers like the gateway, for what the tests script.

    - ``refusals``: popped one per write call (Ingest, IngestBatch), refusing it;
    - writes with a key seen before return the first ingestions and write nothing;
    - ``log``: the tenant's event log; a watch stream sends the events after its cursor (with
      ids and no cursor, their current states first) and breaks with UNAVAILABLE after
      ``break_every`` events, as often as ``breaks`` says.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.refusals: list[Refusal | None] = []  # None: let that call through
        self.write_keys: list[str] = []
        self.writes = 0
        self.by_key: dict[str, list[ingest_pb2.Ingestion]] = {}
        self.batch_sizes: list[int] = []
        self.log: list[ingest_pb2.Ingestion] = []  # event n (cursor str(n + 1)) is log[n]
        self.break_every = 0
        self.breaks = 0
        self.watch_requests: list[ingest_pb2.WatchIngestionsRequest] = []
        self.watch_refusal: Refusal | None = None

    def _write(self, key: str, documents: list[ingest_pb2.Document], context: grpc.ServicerContext) -> list[ingest_pb2.Ingestion]:
        with self.lock:
            self.write_keys.append(key)
            refusal = self.refusals.pop(0) if self.refusals else None
            if refusal is not None:
                pass
            elif key in self.by_key:
                return self.by_key[key]
            else:
                self.writes += 1
                made = [
                    ingest_pb2.Ingestion(ingestion_id=str(uuid.uuid4()), document_id=d.document_id, state=ACCEPTED)
                    for d in documents
                ]
                self.by_key[key] = made
                return made
        abort(context, refusal)
        raise AssertionError("unreachable")

    def GetIngestion(self, request: ingest_pb2.GetIngestionRequest, context: grpc.ServicerContext) -> ingest_pb2.Ingestion:
        with self.lock:
            found = [i for i in self.log if i.ingestion_id == request.ingestion_id]
        if not found:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no ingestion {request.ingestion_id}")
        return found[-1]

    def DeleteDocument(
        self, request: ingest_pb2.DeleteDocumentRequest, context: grpc.ServicerContext
    ) -> ingest_pb2.DeleteDocumentResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")
        raise AssertionError("unreachable")

    def Ingest(self, request: ingest_pb2.IngestRequest, context: grpc.ServicerContext) -> ingest_pb2.IngestResponse:
        return ingest_pb2.IngestResponse(ingestion=self._write(request.idempotency_key, [request.document], context)[0])

    def IngestBatch(
        self, request: ingest_pb2.IngestBatchRequest, context: grpc.ServicerContext
    ) -> ingest_pb2.IngestBatchResponse:
        self.batch_sizes.append(len(request.documents))
        return ingest_pb2.IngestBatchResponse(ingestions=self._write(request.idempotency_key, list(request.documents), context))

    def add_events(self, *ingestions: ingest_pb2.Ingestion) -> None:
        with self.lock:
            self.log.extend(ingestions)

    def WatchIngestions(
        self, request: ingest_pb2.WatchIngestionsRequest, context: grpc.ServicerContext
    ) -> Iterator[ingest_pb2.IngestionEvent]:
        with self.lock:
            self.watch_requests.append(request)
            log = list(self.log)
            breaking = self.breaks > 0
            self.breaks -= 1 if breaking else 0
        if self.watch_refusal is not None:
            abort(context, self.watch_refusal)
        ids = list(request.ingestion_ids)
        events: list[tuple[int, ingest_pb2.Ingestion]] = []
        start = int(request.after_cursor or 0) if request.after_cursor or not ids else len(log)
        if ids and not request.after_cursor:
            latest: dict[str, ingest_pb2.Ingestion] = {}
            for ingestion in log:
                latest[ingestion.ingestion_id] = ingestion
            events += ((len(log), latest[i]) for i in ids)
        events += ((n + 1, log[n]) for n in range(start, len(log)) if not ids or log[n].ingestion_id in ids)
        for sent, (seq, ingestion) in enumerate(events):
            if breaking and sent == self.break_every:
                context.abort(grpc.StatusCode.UNAVAILABLE, "gateway is shutting down; watch again with your last cursor")
            yield ingest_pb2.IngestionEvent(ingestion=ingestion, cursor=str(seq))
        # With ids the stream ends (all of the test's ingestions have ended by the end of the
        # log); without, it would wait for more: end it as a shutdown would.
        if not ids:
            context.abort(grpc.StatusCode.UNAVAILABLE, "no more events in this fake")

    def Search(self, request: search_pb2.SearchRequest, context: grpc.ServicerContext) -> search_pb2.SearchResponse:
        hits = [
            search_pb2.SearchHit(document_id=f"d{i}", chunk_index=i, text=request.query, score=1.0 - i / 10, attributes=request.attribute_filter)
            for i in range(request.top_k)
        ]
        return search_pb2.SearchResponse(hits=hits)


class Running:
    def __init__(self) -> None:
        self.fake = FakeGateway()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        ingest_pb2_grpc.add_IngestServiceServicer_to_server(self.fake, self.server)
        search_pb2_grpc.add_SearchServiceServicer_to_server(self.fake, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(grace=None)
