package sluice

// An in-process stand-in for the gateway, scripted per test: refusals with google.rpc
// details, an idempotency store, and watch streams that break on cue. Plaintext on loopback.

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/golang/protobuf/proto"
	"github.com/golang/protobuf/ptypes"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"sluice/sdk/go/sluicev1"
)

type refusal struct {
	code       codes.Code
	message    string
	retryDelay time.Duration // with a RetryInfo when > 0
	quota      string
	fields     [][2]string
}

func (r *refusal) status() *status.Status {
	var details []proto.Message
	if len(r.fields) > 0 {
		bad := &errdetails.BadRequest{}
		for _, f := range r.fields {
			bad.FieldViolations = append(bad.FieldViolations, &errdetails.BadRequest_FieldViolation{Field: f[0], Description: f[1]})
		}
		details = append(details, bad)
	}
	if r.quota != "" {
		details = append(details, &errdetails.QuotaFailure{Violations: []*errdetails.QuotaFailure_Violation{{Subject: r.quota, Description: "over"}}})
	}
	if r.retryDelay > 0 {
		details = append(details, &errdetails.RetryInfo{RetryDelay: ptypes.DurationProto(r.retryDelay)})
	}
	st, err := status.New(r.code, r.message).WithDetails(details...)
	if err != nil {
		panic(err)
	}
	return st
}

type fakeGateway struct {
	sluicev1.UnimplementedIngestServiceServer
	sluicev1.UnimplementedSearchServiceServer

	mu           sync.Mutex
	refusals     []*refusal // popped one per write call; nil lets that call through
	writeKeys    []string
	writes       int
	byKey        map[string][]*sluicev1.Ingestion
	batchSizes   []int
	tenants      []string              // the x-sluice-tenant header of each call
	log          []*sluicev1.Ingestion // event n (cursor n+1) is log[n]
	breakEvery   int                   // a breaking stream fails UNAVAILABLE after this many events
	breaks       int                   // how many streams break
	watchReqs    []*sluicev1.WatchIngestionsRequest
	watchRefusal *refusal
	nextID       int
}

func (f *fakeGateway) noteTenant(ctx context.Context) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.tenants = append(f.tenants, md.Get("x-sluice-tenant")...)
}

func (f *fakeGateway) write(ctx context.Context, key string, docs []*sluicev1.Document) ([]*sluicev1.Ingestion, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.noteTenant(ctx)
	f.writeKeys = append(f.writeKeys, key)
	var r *refusal
	if len(f.refusals) > 0 {
		r, f.refusals = f.refusals[0], f.refusals[1:]
	}
	if r != nil {
		return nil, r.status().Err()
	}
	if made, ok := f.byKey[key]; ok {
		return made, nil
	}
	f.writes++
	var made []*sluicev1.Ingestion
	for _, d := range docs {
		f.nextID++
		made = append(made, &sluicev1.Ingestion{IngestionId: fmt.Sprintf("new-%d", f.nextID), DocumentId: d.GetDocumentId(), State: sluicev1.IngestionState_INGESTION_STATE_ACCEPTED})
	}
	if f.byKey == nil {
		f.byKey = map[string][]*sluicev1.Ingestion{}
	}
	f.byKey[key] = made
	return made, nil
}

func (f *fakeGateway) Ingest(ctx context.Context, r *sluicev1.IngestRequest) (*sluicev1.IngestResponse, error) {
	made, err := f.write(ctx, r.GetIdempotencyKey(), []*sluicev1.Document{r.GetDocument()})
	if err != nil {
		return nil, err
	}
	return &sluicev1.IngestResponse{Ingestion: made[0]}, nil
}

func (f *fakeGateway) IngestBatch(ctx context.Context, r *sluicev1.IngestBatchRequest) (*sluicev1.IngestBatchResponse, error) {
	f.mu.Lock()
	f.batchSizes = append(f.batchSizes, len(r.GetDocuments()))
	f.mu.Unlock()
	made, err := f.write(ctx, r.GetIdempotencyKey(), r.GetDocuments())
	if err != nil {
		return nil, err
	}
	return &sluicev1.IngestBatchResponse{Ingestions: made}, nil
}

func (f *fakeGateway) GetIngestion(ctx context.Context, r *sluicev1.GetIngestionRequest) (*sluicev1.Ingestion, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var found *sluicev1.Ingestion
	for _, i := range f.log {
		if i.GetIngestionId() == r.GetIngestionId() {
			found = i
		}
	}
	if found == nil {
		return nil, status.Errorf(codes.NotFound, "no ingestion %s", r.GetIngestionId())
	}
	return found, nil
}

func (f *fakeGateway) addEvents(ingestions ...*sluicev1.Ingestion) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log = append(f.log, ingestions...)
}

// WatchIngestions sends the events after the request's cursor (with ids and no cursor, their
// current states first) and breaks with UNAVAILABLE after breakEvery events, as often as
// breaks says. With ids the stream ends at the end of the log (all of a test's ingestions
// have ended by then); without, it ends UNAVAILABLE, as a gateway shutting down would.
func (f *fakeGateway) WatchIngestions(r *sluicev1.WatchIngestionsRequest, stream sluicev1.IngestService_WatchIngestionsServer) error {
	f.mu.Lock()
	f.noteTenant(stream.Context())
	f.watchReqs = append(f.watchReqs, r)
	log := append([]*sluicev1.Ingestion(nil), f.log...)
	breaking := f.breaks > 0
	if breaking {
		f.breaks--
	}
	refused := f.watchRefusal
	f.mu.Unlock()
	if refused != nil {
		return refused.status().Err()
	}
	ids := r.GetIngestionIds()
	wanted := map[string]bool{}
	for _, id := range ids {
		wanted[id] = true
	}
	type event struct {
		seq       int
		ingestion *sluicev1.Ingestion
	}
	var events []event
	start := len(log)
	if r.GetAfterCursor() != "" || len(ids) == 0 {
		start, _ = strconv.Atoi(r.GetAfterCursor())
	}
	if len(ids) > 0 && r.GetAfterCursor() == "" {
		latest := map[string]*sluicev1.Ingestion{}
		for _, i := range log {
			latest[i.GetIngestionId()] = i
		}
		for _, id := range ids {
			if latest[id] == nil {
				return status.Errorf(codes.NotFound, "no ingestion %s", id)
			}
			events = append(events, event{len(log), latest[id]})
		}
	}
	for n := start; n < len(log); n++ {
		if len(ids) == 0 || wanted[log[n].GetIngestionId()] {
			events = append(events, event{n + 1, log[n]})
		}
	}
	for sent, e := range events {
		if breaking && sent == f.breakEvery {
			return status.Error(codes.Unavailable, "gateway is shutting down; watch again with your last cursor")
		}
		if err := stream.Send(&sluicev1.IngestionEvent{Ingestion: e.ingestion, Cursor: strconv.Itoa(e.seq)}); err != nil {
			return err
		}
	}
	if len(ids) == 0 {
		return status.Error(codes.Unavailable, "no more events in this fake")
	}
	return nil
}

func (f *fakeGateway) Search(ctx context.Context, r *sluicev1.SearchRequest) (*sluicev1.SearchResponse, error) {
	var hits []*sluicev1.SearchHit
	for i := 0; i < int(r.GetTopK()); i++ {
		hits = append(hits, &sluicev1.SearchHit{DocumentId: fmt.Sprintf("d%d", i), ChunkIndex: uint32(i), Text: r.GetQuery(),
			Score: 1 - float32(i)/10, Attributes: r.GetAttributeFilter()})
	}
	return &sluicev1.SearchResponse{Hits: hits}, nil
}

// startFake serves a fake gateway on a free loopback port until the test ends.
func startFake(t *testing.T) (*fakeGateway, string) {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fake := &fakeGateway{}
	server := grpc.NewServer()
	sluicev1.RegisterIngestServiceServer(server, fake)
	sluicev1.RegisterSearchServiceServer(server, fake)
	go func() { _ = server.Serve(listener) }()
	t.Cleanup(server.Stop)
	return fake, listener.Addr().String()
}

var fast = RetryPolicy{MaxAttempts: 5, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, Multiplier: 2, Jitter: 0.2}

// connectFake is a client of the fake: plaintext, dev tenant t, quick watch reconnects.
func connectFake(t *testing.T, target string, options ...Option) *Client {
	t.Helper()
	client, err := New(target, append([]Option{WithDevTenant("t"), WithTimeout(10 * time.Second), WithWatchRetry(fast)}, options...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}

func ingestion(i int, state sluicev1.IngestionState) *sluicev1.Ingestion {
	return &sluicev1.Ingestion{IngestionId: fmt.Sprintf("ing-%d", i), DocumentId: fmt.Sprintf("doc-%d", i), State: state}
}

const (
	accepted = sluicev1.IngestionState_INGESTION_STATE_ACCEPTED
	indexed  = sluicev1.IngestionState_INGESTION_STATE_INDEXED
)
