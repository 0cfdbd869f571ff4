package sluice

// The client's own logic against the fake gateway: batching, watch resumption (no event
// missed or repeated across broken streams), WaitFor, search results.

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"sluice/sdk/go/sluicev1"
)

var bg = context.Background()

func text(id, body string) Document { return Document{ID: id, Fields: map[string]any{"text": body}} }

func TestBatchesSplitByCountAndBytesInOrder(t *testing.T) {
	var docs []Document
	for i := 0; i < 25; i++ {
		docs = append(docs, text(fmt.Sprintf("d%d", i), strings.Repeat("x", 100)))
	}
	byCount, err := batches(docs, 10, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	var sizes []int
	var order []string
	for _, b := range byCount {
		sizes = append(sizes, len(b))
		for _, d := range b {
			order = append(order, d.GetDocumentId())
		}
	}
	if !reflect.DeepEqual(sizes, []int{10, 10, 5}) || order[0] != "d0" || order[24] != "d24" || len(order) != 25 {
		t.Error(sizes, order)
	}
	byBytes, _ := batches(docs, 100, 3*130)
	total := 0
	for _, b := range byBytes {
		total += len(b)
		if len(b) > 3 {
			t.Errorf("a batch of %d over the byte limit", len(b))
		}
	}
	if total != 25 {
		t.Error(total)
	}
	// One document larger than the limit goes alone.
	alone, _ := batches([]Document{text("big", strings.Repeat("y", 1000)), text("s", "")}, 10, 100)
	if len(alone) != 2 {
		t.Error(len(alone))
	}
	if _, err := batches([]Document{{ID: "bad", Fields: 5}}, 10, 100); err == nil || !strings.Contains(err.Error(), `"bad"`) {
		t.Error(err)
	}
}

func TestIngestManyCallsIngestBatchPerBatchWithAKeyEach(t *testing.T) {
	fake, target := startFake(t)
	var docs []Document
	for i := 0; i < 7; i++ {
		docs = append(docs, Document{ID: fmt.Sprintf("d%d", i), Fields: map[string]any{"text": fmt.Sprint(i)}, Attributes: map[string]string{"k": "v"}})
	}
	docs = append(docs, text("last", "the last one"))
	got, err := connectFake(t, target, WithBatchSize(3)).IngestMany(bg, docs)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(fake.batchSizes, []int{3, 3, 2}) || len(got) != 8 || got[7].DocumentID != "last" || got[0].DocumentID != "d0" {
		t.Error(fake.batchSizes, got)
	}
	keys := map[string]bool{}
	for _, k := range fake.writeKeys {
		keys[k] = true
	}
	if len(keys) != 3 {
		t.Errorf("%d keys for 3 batches", len(keys))
	}
	// BatchSize overrides the client's.
	fake.batchSizes = nil
	if _, err := connectFake(t, target, WithBatchSize(3)).IngestMany(bg, docs, BatchSize(5)); err != nil || !reflect.DeepEqual(fake.batchSizes, []int{5, 3}) {
		t.Error(err, fake.batchSizes)
	}
}

func TestAFailedBatchReportsWhatWasAcceptedBeforeIt(t *testing.T) {
	fake, target := startFake(t)
	fake.refusals = []*refusal{nil, {code: codes.InvalidArgument, message: "bad", fields: [][2]string{{"documents[1].document_id", "bad"}}}}
	var docs []Document
	for _, name := range "abcde" {
		docs = append(docs, text(string(name), ""))
	}
	_, err := connectFake(t, target, WithBatchSize(2)).IngestMany(bg, docs)
	var e *Error
	if !errors.As(err, &e) || e.Code != codes.InvalidArgument || len(e.Accepted) != 2 || e.Accepted[1].DocumentID != "b" {
		t.Fatal(err)
	}
	if e.FieldViolations[0].Field != "documents[1].document_id" || !reflect.DeepEqual(fake.batchSizes, []int{2, 2}) {
		t.Error(e.FieldViolations, fake.batchSizes)
	}
}

func TestGetIngestion(t *testing.T) {
	fake, target := startFake(t)
	fake.addEvents(ingestion(1, accepted), ingestion(1, indexed))
	client := connectFake(t, target)
	if got, err := client.GetIngestion(bg, "ing-1"); err != nil || got.State != StateIndexed || !got.Finished() {
		t.Error(got, err)
	}
	if _, err := client.GetIngestion(bg, "ing-2"); asError(err).Code != codes.NotFound {
		t.Error(err)
	}
}

func TestWatchResumesAfterEachBrokenStreamWithNoEventMissedOrRepeated(t *testing.T) {
	fake, target := startFake(t)
	for i := 0; i < 30; i++ {
		fake.addEvents(ingestion(i, accepted))
	}
	for i := 0; i < 30; i++ {
		fake.addEvents(ingestion(i, indexed))
	}
	fake.breakEvery, fake.breaks = 7, 100
	var resumed []string
	client := connectFake(t, target, WithLogger(func(format string, args ...any) { resumed = append(resumed, fmt.Sprintf(format, args...)) }))
	w := client.Watch(bg, WatchOptions{AfterCursor: "0"})
	var events []IngestionEvent
	for w.Next() {
		events = append(events, w.Event())
		if len(events) == 60 {
			w.Close()
		}
	}
	if w.Err() != nil || len(events) != 60 {
		t.Fatal(w.Err(), len(events))
	}
	for n, e := range events {
		state := StateAccepted
		if n >= 30 {
			state = StateIndexed
		}
		if e.Cursor != fmt.Sprint(n+1) || e.Ingestion.ID != fmt.Sprintf("ing-%d", n%30) || e.Ingestion.State != state {
			t.Fatalf("event %d: %+v", n, e)
		}
	}
	if w.Cursor() != "60" {
		t.Error(w.Cursor())
	}
	// Each new stream asked for the events after the last one received.
	var cursors []string
	for _, r := range fake.watchReqs[:4] {
		cursors = append(cursors, r.GetAfterCursor())
	}
	if !reflect.DeepEqual(cursors, []string{"0", "7", "14", "21"}) {
		t.Error(cursors)
	}
	if len(resumed) < 8 || !strings.Contains(resumed[0], `resuming after cursor "7"`) {
		t.Error(resumed)
	}
}

func TestWatchingIDsRestartsABrokenSnapshotAndHandsOutEachStateOnce(t *testing.T) {
	fake, target := startFake(t)
	for i := 0; i < 5; i++ {
		fake.addEvents(ingestion(i, accepted))
	}
	for i := 0; i < 3; i++ {
		fake.addEvents(ingestion(i, indexed))
	}
	var ids []string
	for i := 0; i < 5; i++ {
		ids = append(ids, fmt.Sprintf("ing-%d", i))
	}
	fake.breakEvery, fake.breaks = 2, 1 // the first stream breaks inside the snapshot
	w := connectFake(t, target).Watch(bg, WatchOptions{IngestionIDs: ids})
	defer w.Close()
	var seen []string
	for w.Next() {
		e := w.Event()
		seen = append(seen, e.Ingestion.ID+" "+e.Ingestion.State.String())
		if len(seen) == 2 {
			fake.addEvents(ingestion(3, indexed), ingestion(4, indexed))
		}
	}
	if w.Err() != nil {
		t.Fatal(w.Err())
	}
	// The snapshot said ing-0 and ing-1 were INDEXED; the new snapshot repeats them (dropped)
	// and shows the rest as they are now.
	sort.Strings(seen)
	want := []string{"ing-0 INDEXED", "ing-1 INDEXED", "ing-2 INDEXED", "ing-3 INDEXED", "ing-4 INDEXED"}
	if !reflect.DeepEqual(seen, want) {
		t.Error(seen)
	}
	if len(fake.watchReqs) != 2 || fake.watchReqs[0].GetAfterCursor() != "" || fake.watchReqs[1].GetAfterCursor() != "" {
		t.Error(fake.watchReqs)
	}
}

func TestWatchGivesUpAfterItsAttemptsInARow(t *testing.T) {
	fake, target := startFake(t)
	fake.watchRefusal = &refusal{code: codes.Unavailable, message: "down", retryDelay: time.Millisecond}
	w := connectFake(t, target).Watch(bg, WatchOptions{})
	for w.Next() {
	}
	if asError(w.Err()).Code != codes.Unavailable || len(fake.watchReqs) != fast.MaxAttempts {
		t.Error(w.Err(), len(fake.watchReqs))
	}
}

func TestAnExpiredCursorIsOutOfRangeAtOnce(t *testing.T) {
	fake, target := startFake(t)
	fake.watchRefusal = &refusal{code: codes.OutOfRange, message: "the events after this cursor are older than the gateway keeps"}
	w := connectFake(t, target).Watch(bg, WatchOptions{AfterCursor: "1"})
	if w.Next() || asError(w.Err()).Code != codes.OutOfRange || len(fake.watchReqs) != 1 {
		t.Error(w.Err(), len(fake.watchReqs))
	}
}

func TestAWatchEndsWithItsContext(t *testing.T) {
	fake, target := startFake(t)
	fake.watchRefusal = &refusal{code: codes.Unavailable, message: "down", retryDelay: 50 * time.Millisecond}
	patient := fast
	patient.MaxAttempts = 1000
	ctx, cancel := context.WithTimeout(bg, 300*time.Millisecond)
	defer cancel()
	started := time.Now()
	w := connectFake(t, target, WithWatchRetry(patient)).Watch(ctx, WatchOptions{})
	for w.Next() {
	}
	if asError(w.Err()).Code != codes.DeadlineExceeded || time.Since(started) > 2*time.Second {
		t.Error(w.Err(), time.Since(started))
	}
}

func TestWaitForReturnsEachIngestionAsItEnded(t *testing.T) {
	fake, target := startFake(t)
	for i := 0; i < 4; i++ {
		fake.addEvents(ingestion(i, accepted), ingestion(i, indexed))
	}
	ended, err := connectFake(t, target, WithBatchSize(3)).WaitFor(bg, []string{"ing-3", "ing-0", "ing-1", "ing-2", "ing-0"})
	if err != nil || len(ended) != 4 {
		t.Fatal(ended, err)
	}
	for id, i := range ended {
		if i.ID != id || i.State != StateIndexed {
			t.Error(i)
		}
	}
	if len(fake.watchReqs) != 2 || len(fake.watchReqs[0].GetIngestionIds()) != 3 || len(fake.watchReqs[1].GetIngestionIds()) != 1 {
		t.Error(fake.watchReqs)
	}
	if !reflect.DeepEqual(fake.watchReqs[0].GetIngestionIds(), []string{"ing-3", "ing-0", "ing-1"}) {
		t.Error(fake.watchReqs[0].GetIngestionIds())
	}
}

func TestWaitForTimesOutWithWhatFinished(t *testing.T) {
	fake, target := startFake(t)
	fake.addEvents(ingestion(0, accepted), ingestion(0, indexed), ingestion(1, accepted))
	// The fake ends a stream once its log is sent; a real gateway waits. Either way ing-1
	// never ends.
	slow := RetryPolicy{MaxAttempts: 1000, InitialBackoff: 50 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, Multiplier: 1}
	ctx, cancel := context.WithTimeout(bg, 500*time.Millisecond)
	defer cancel()
	_, err := connectFake(t, target, WithWatchRetry(slow)).WaitFor(ctx, []string{"ing-0", "ing-1"})
	var timeout *WaitTimeout
	if !errors.As(err, &timeout) || asError(err).Code != codes.DeadlineExceeded {
		t.Fatal(err)
	}
	if len(timeout.Finished) != 1 || timeout.Finished["ing-0"].State != StateIndexed || !reflect.DeepEqual(timeout.Pending, []string{"ing-1"}) {
		t.Error(timeout.Finished, timeout.Pending)
	}
	// Without a deadline in the context, the client's wait timeout bounds it.
	started := time.Now()
	_, err = connectFake(t, target, WithWatchRetry(slow), WithWaitTimeout(300*time.Millisecond)).WaitFor(bg, []string{"ing-1"})
	if !errors.As(err, &timeout) || time.Since(started) > 2*time.Second {
		t.Error(err, time.Since(started))
	}
}

func TestIngestManyWithWaitReturnsTheEnded(t *testing.T) {
	fake, target := startFake(t)
	client := connectFake(t, target, WithBatchSize(2))
	got, err := client.IngestMany(bg, []Document{text("d0", "0"), text("d1", "1"), text("d2", "2")})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range got {
		fake.addEvents(&sluicev1.Ingestion{IngestionId: a.ID, DocumentId: a.DocumentID, State: indexed})
	}
	ended, err := client.WaitFor(bg, []string{got[0].ID, got[1].ID, got[2].ID})
	if err != nil || ended[got[2].ID].DocumentID != "d2" || ended[got[0].ID].State != StateIndexed {
		t.Error(ended, err)
	}
	if !reflect.DeepEqual(fake.batchSizes, []int{2, 1}) {
		t.Error(fake.batchSizes)
	}
}

func TestSearchReturnsTypedHits(t *testing.T) {
	_, target := startFake(t)
	hits, err := connectFake(t, target).Search(bg, "tides", 2, map[string]string{"kind": "sample"})
	want := []Hit{
		{DocumentID: "d0", ChunkIndex: 0, Text: "tides", Score: 1, Attributes: map[string]string{"kind": "sample"}},
		{DocumentID: "d1", ChunkIndex: 1, Text: "tides", Score: 0.9, Attributes: map[string]string{"kind": "sample"}},
	}
	if err != nil || !reflect.DeepEqual(hits, want) {
		t.Errorf("%+v %v", hits, err)
	}
}

func TestAClientNeedsCredentialsUnlessItNamesADevTenant(t *testing.T) {
	if _, err := New("127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "mTLS") {
		t.Error(err)
	}
}
