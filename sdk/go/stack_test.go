package sluice_test

// Against a real local stack (internal/stack): the example, the client's calls and errors as
// the gateway sends them, quotas with RetryInfo, and a watch that outlives gateway restarts.
//
// These fail when the broker, the binaries or the model are missing, unless
// SLUICE_SDK_REQUIRE_STACK=0: then they are skipped.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	sluice "sluice/sdk/go"
	"sluice/sdk/go/internal/stack"
)

var (
	shared     *stack.Stack
	sharedErr  error
	sharedOnce sync.Once
)

func TestMain(m *testing.M) {
	code := m.Run()
	if shared != nil {
		shared.Close()
		if code != 0 {
			fmt.Fprintf(os.Stderr, "the stack was in %s; sluice.log (%d start(s)):\n%s\n", shared.Root, shared.GatewayStarts, shared.LogTail(15))
		} else {
			_ = os.RemoveAll(shared.Root)
		}
	}
	os.Exit(code)
}

// localStack is the stack the tests share, started by the first that needs it.
func localStack(t *testing.T) *stack.Stack {
	t.Helper()
	sharedOnce.Do(func() {
		tools, err := stack.FindTools()
		if err != nil {
			sharedErr = err
			return
		}
		root, err := os.MkdirTemp("", "sluice-sdk-go-stack-")
		if err != nil {
			sharedErr = err
			return
		}
		shared = stack.New(tools, root, "demo")
		if err := shared.Start(); err != nil {
			sharedErr = fmt.Errorf("the local stack did not start: %w", err)
		}
	})
	if sharedErr != nil {
		if os.Getenv("SLUICE_SDK_REQUIRE_STACK") == "0" {
			t.Skip(sharedErr)
		}
		t.Fatalf("the local stack cannot start (SLUICE_SDK_REQUIRE_STACK=0 skips these tests): %v", sharedErr)
	}
	return shared
}

func connect(t *testing.T, s *stack.Stack, options ...sluice.Option) *sluice.Client {
	t.Helper()
	client, err := sluice.FromDirectory(s.Target(), s.TLS, s.Tenant, "", options...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}

func code(err error) codes.Code {
	var e *sluice.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return codes.OK
}

type sample struct {
	ID, Title, Text string
}

func samples(t *testing.T) []sample {
	data, err := os.ReadFile(filepath.Join("..", "..", "deploy", "dev", "samples.json"))
	if err != nil {
		t.Fatal(err)
	}
	var out []sample
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestStackTheExampleIngestsAFolderWatchesAndSearches(t *testing.T) {
	s := localStack(t)
	dir := t.TempDir()
	folder := filepath.Join(dir, "notes")
	if err := os.Mkdir(folder, 0o755); err != nil {
		t.Fatal(err)
	}
	all := samples(t)
	glacier := ""
	for _, sm := range all {
		if err := os.WriteFile(filepath.Join(folder, sm.ID+".txt"), []byte(sm.Title+"\n\n"+sm.Text+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(sm.Title, "lacier") {
			glacier = sm.ID
		}
	}
	binary := filepath.Join(dir, "ingest-folder")
	if out, err := exec.Command("go", "build", "-o", binary, "./examples/ingest-folder").CombinedOutput(); err != nil {
		t.Fatalf("go build ./examples/ingest-folder: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, folder, "-target", s.Target(), "-certs", s.TLS, "-tenant", s.Tenant,
		"-query", "how do glaciers shape the land")
	out, err := cmd.CombinedOutput()
	t.Logf("%s", out)
	if err != nil {
		t.Fatalf("the example failed (%v):\n%s\n%s", err, out, s.LogTail(40))
	}
	if !strings.Contains(string(out), fmt.Sprintf("indexed %d of %d", len(all), len(all))) {
		t.Errorf("not all indexed:\n%s", out)
	}
	var hits [][]string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "  0.") {
			hits = append(hits, strings.Fields(line))
		}
	}
	if len(hits) == 0 || hits[0][1] != glacier+".txt" {
		t.Errorf("the glacier note is not the best hit:\n%s", out)
	}
}

func TestStackIngestSearchDeleteAndSchemas(t *testing.T) {
	s := localStack(t)
	client := connect(t, s)
	ctx := context.Background()
	ingestion, err := client.Ingest(ctx, sluice.Document{ID: "tides", Fields: map[string]any{"title": "Tides", "text": "The moon pulls the sea twice a day."},
		Attributes: map[string]string{"kind": "note"}}, sluice.Wait())
	if err != nil || ingestion.State != sluice.StateIndexed || ingestion.ChunkCount < 1 || ingestion.CompletedAt.IsZero() || ingestion.AcceptedAt.IsZero() {
		t.Fatalf("%+v %v", ingestion, err)
	}
	if got, err := client.GetIngestion(ctx, ingestion.ID); err != nil || !got.AcceptedAt.Equal(ingestion.AcceptedAt) || got.State != ingestion.State || got.ChunkCount != ingestion.ChunkCount {
		t.Errorf("%+v %v", got, err)
	}
	hits, err := client.Search(ctx, "what moves the tides", 3, map[string]string{"kind": "note"})
	if err != nil || len(hits) == 0 || hits[0].DocumentID != "tides" || hits[0].Attributes["kind"] != "note" || hits[0].Attributes["title"] != "Tides" {
		t.Fatalf("%+v %v", hits, err)
	}

	// A schema of the tenant's own; strict Avro JSON (tagged unions) from its definition.
	fields := []any{
		map[string]any{"name": "headline", "type": "string", "sluice.role": "attribute"},
		map[string]any{"name": "body", "type": "string", "sluice.role": "text"},
		map[string]any{"name": "pages", "type": []any{"null", "int", "string"}, "default": nil},
	}
	definition := map[string]any{"type": "record", "name": "Article", "namespace": "com.example", "fields": fields}
	schema, err := client.RegisterSchema(ctx, "article", definition)
	if err != nil || schema.Version != 1 || schema.TextField != "body" {
		t.Fatalf("%+v %v", schema, err)
	}
	names, err := client.ListSchemas(ctx)
	if err != nil || !contains(names, "article") {
		t.Error(names, err)
	}
	latest, err := client.GetSchema(ctx, "article", 0)
	if err != nil {
		t.Fatal(err)
	}
	type articleDoc struct {
		Headline string `json:"headline"`
		Body     string `json:"body"`
		Pages    int    `json:"pages"`
	}
	article, err := client.Ingest(ctx, sluice.Document{ID: "a-1", Fields: articleDoc{"Ebb", "The sea withdraws.", 3}, Schema: "article", AvroSchema: latest.Definition}, sluice.Wait())
	if err != nil || article.State != sluice.StateIndexed {
		t.Fatalf("%+v %v", article, err)
	}
	incompatible := map[string]any{"type": "record", "name": "Article", "namespace": "com.example",
		"fields": append(append([]any(nil), fields...), map[string]any{"name": "isbn", "type": "string"})}
	_, err = client.RegisterSchema(ctx, "article", incompatible)
	var refused *sluice.Error
	if !errors.As(err, &refused) || refused.Code != codes.FailedPrecondition || len(refused.PreconditionViolations) == 0 || refused.PreconditionViolations[0].Type != "COMPATIBILITY" {
		t.Errorf("%#v", err)
	}

	deleted, err := client.Delete(ctx, "tides", sluice.Wait())
	if err != nil || deleted.State != sluice.StateDeleted {
		t.Fatalf("%+v %v", deleted, err)
	}
	hits, err = client.Search(ctx, "what moves the tides", 5, nil)
	for _, h := range hits {
		if h.DocumentID == "tides" || err != nil {
			t.Errorf("deleted, yet found: %+v %v", h, err)
		}
	}
}

func keys(set map[string]bool) []string {
	var out []string
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func contains(list []string, s string) bool {
	for _, item := range list {
		if item == s {
			return true
		}
	}
	return false
}

func TestStackAnInvalidDocumentGivesFieldViolations(t *testing.T) {
	s := localStack(t)
	client := connect(t, s)
	_, err := client.IngestMany(context.Background(), []sluice.Document{
		{ID: "ok", Fields: map[string]any{"text": "fine"}},
		{ID: "bad", Fields: map[string]any{"text": 5, "tags": []any{"a", 1}}},
	})
	var bad *sluice.Error
	if !errors.As(err, &bad) || bad.Code != codes.InvalidArgument {
		t.Fatal(err)
	}
	var paths []string
	for _, v := range bad.FieldViolations {
		paths = append(paths, v.Field)
	}
	sort.Strings(paths)
	if strings.Join(paths, " ") != "documents[1].avro_json.tags[1] documents[1].avro_json.text" {
		t.Errorf("%q (%v)", paths, bad)
	}
	if _, err := client.GetIngestion(context.Background(), "no-such-ingestion"); code(err) != codes.NotFound {
		t.Error(err)
	}
}

type lines struct {
	mu   sync.Mutex
	logs []string
}

func (l *lines) logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.logs = append(l.logs, fmt.Sprintf(format, args...))
}

func (l *lines) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.logs...)
}

func TestStackQuotasAreWaitedOutWhenRetryInfoSaysSo(t *testing.T) {
	s := localStack(t)
	for _, args := range [][]string{
		{"tenant", "create", "tight", "--name", "Tight quotas"},
		{"tenant", "quotas", "tight", "--documents-per-second", "5", "--max-top-k", "2"},
		{"cert", "client", "tight", "--ca-dir", s.TLS, "--out", filepath.Join(s.Root, "tight-certs")},
	} {
		if _, err := s.Admin(args...); err != nil {
			t.Fatal(err)
		}
	}
	var log lines
	// This directory has no ca.pem (cert client --out writes only the pair): name the CA.
	client, err := sluice.FromDirectory(s.Target(), filepath.Join(s.Root, "tight-certs"), "", filepath.Join(s.TLS, "ca.pem"), sluice.WithLogger(log.logf))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx := context.Background()
	deadline := time.Now().Add(10 * time.Second) // the gateway picks registry changes up within a second or so
	for {
		_, err := client.Search(ctx, "anything", 3, nil)
		var e *sluice.Error
		if errors.As(err, &e) && e.Code == codes.ResourceExhausted {
			if len(e.QuotaViolations) == 0 || e.QuotaViolations[0].Subject != "max_top_k" || e.RetryInfo {
				t.Fatalf("%#v", e)
			}
			break
		}
		if code(err) != codes.PermissionDenied { // PERMISSION_DENIED: the new tenant is not known yet
			t.Fatalf("max_top_k: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatal("the max_top_k quota did not take effect")
		}
		time.Sleep(500 * time.Millisecond)
	}
	started := time.Now()
	for n := 0; n < 3; n++ { // 15 documents at 5 a second: RESOURCE_EXHAUSTED with RetryInfo, waited out
		var docs []sluice.Document
		for i := 0; i < 5; i++ {
			docs = append(docs, sluice.Document{ID: fmt.Sprintf("q-%d-%d", n, i), Fields: map[string]any{"text": fmt.Sprintf("quota %d %d", n, i)}})
		}
		if got, err := client.IngestMany(ctx, docs); err != nil || len(got) != 5 {
			t.Fatal(got, err)
		}
	}
	if time.Since(started) < time.Second {
		t.Errorf("15 documents at 5 a second in %v", time.Since(started))
	}
	retried := false
	for _, line := range log.all() {
		retried = retried || (strings.Contains(line, "RESOURCE_EXHAUSTED") && strings.Contains(line, "retrying"))
	}
	if !retried {
		t.Errorf("no retry? %q", log.all())
	}
	var big []sluice.Document // over a second's worth: no RetryInfo, no retry
	for i := 0; i < 6; i++ {
		big = append(big, sluice.Document{ID: fmt.Sprintf("big-%d", i), Fields: map[string]any{"text": "x"}})
	}
	_, err = client.IngestMany(ctx, big)
	var tooBig *sluice.Error
	if !errors.As(err, &tooBig) || tooBig.Code != codes.ResourceExhausted || tooBig.RetryInfo || tooBig.QuotaViolations[0].Subject != "documents_per_second" {
		t.Errorf("%#v", err)
	}
}

// In ten batches of ten: five before the first restart, four during it, one before the second.
const docs = 100

type watcher struct {
	mu     sync.Mutex
	events []sluice.IngestionEvent
	err    error
	done   chan struct{}
	log    lines
}

func (w *watcher) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.events)
}

// TestStackWatchResumesAcrossGatewayRestarts: two watchers follow the tenant's events from a
// cursor while 100 documents are ingested and the gateway is stopped twice: gracefully
// (SIGTERM) while documents are being written, then killed (SIGKILL) while the last batch is
// being indexed. Each watcher must see exactly the 200 events (ACCEPTED, then INDEXED, per
// document), in cursor order, once each, and must have resumed at both stops.
func TestStackWatchResumesAcrossGatewayRestarts(t *testing.T) {
	s := localStack(t)
	startsBefore := s.GatewayStarts
	patient := sluice.RetryPolicy{MaxAttempts: 60, InitialBackoff: 100 * time.Millisecond, MaxBackoff: time.Second, Multiplier: 2, Jitter: 0.2}
	ctx := context.Background()
	seeding := connect(t, s)
	seed, err := seeding.Ingest(ctx, sluice.Document{ID: "seed", Fields: map[string]any{"text": "Where the watch starts."}}, sluice.Wait())
	if err != nil {
		t.Fatal(err)
	}
	w := seeding.Watch(ctx, sluice.WatchOptions{IngestionIDs: []string{seed.ID}})
	for w.Next() {
	}
	if w.Err() != nil {
		t.Fatal(w.Err())
	}
	start := w.Cursor()

	expected := 2 * docs
	watchers := []*watcher{{done: make(chan struct{})}, {done: make(chan struct{})}}
	for _, wr := range watchers {
		wr := wr
		client := connect(t, s, sluice.WithWatchRetry(patient), sluice.WithLogger(wr.log.logf))
		go func() {
			defer close(wr.done)
			watchCtx, cancel := context.WithTimeout(ctx, 240*time.Second)
			defer cancel()
			watch := client.Watch(watchCtx, sluice.WatchOptions{AfterCursor: start})
			defer watch.Close()
			for watch.Next() {
				wr.mu.Lock()
				wr.events = append(wr.events, watch.Event())
				n := len(wr.events)
				wr.mu.Unlock()
				if n == expected {
					return
				}
			}
			err := fmt.Errorf("the watch ended after %d events: %v", wr.count(), watch.Err())
			wr.mu.Lock()
			wr.err = err
			wr.mu.Unlock()
		}()
	}
	failed := func() error {
		for _, wr := range watchers {
			wr.mu.Lock()
			err := wr.err
			wr.mu.Unlock()
			if err != nil {
				return err
			}
		}
		return nil
	}
	time.Sleep(time.Second) // both streams open

	var writes lines
	writer := connect(t, s, sluice.WithRetry(patient), sluice.WithTimeout(120*time.Second), sluice.WithLogger(writes.logf))
	var idsMu sync.Mutex
	var ids []string
	ingest := func(batches ...int) error {
		for _, batch := range batches {
			var group []sluice.Document
			for i := 0; i < 10; i++ {
				group = append(group, sluice.Document{ID: fmt.Sprintf("resume-%d-%d", batch, i), Fields: map[string]any{"text": fmt.Sprintf("Resume test document %d.%d: the tide turns.", batch, i)}})
			}
			got, err := writer.IngestMany(ctx, group)
			if err != nil {
				return fmt.Errorf("batch %d: %w", batch, err)
			}
			idsMu.Lock()
			for _, g := range got {
				ids = append(ids, g.ID)
			}
			idsMu.Unlock()
		}
		return nil
	}
	waitUntil := func(condition string, check func() bool) {
		t.Helper()
		deadline := time.Now().Add(120 * time.Second)
		for !check() {
			if err := failed(); err != nil {
				t.Fatal(err)
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting until %s; %d and %d events", condition, watchers[0].count(), watchers[1].count())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	least := func() int {
		n := watchers[0].count()
		if m := watchers[1].count(); m < n {
			n = m
		}
		return n
	}

	began := time.Now()
	var phases []string
	phase := func(name string) {
		phases = append(phases, fmt.Sprintf("%s +%.1f s", name, time.Since(began).Seconds()))
	}
	if err := ingest(0, 1, 2, 3, 4); err != nil {
		t.Fatal(err)
	}
	waitUntil("the watchers are mid-way", func() bool { return least() >= 40 })
	phase("50 documents in, watchers mid-way")
	// Graceful: streams end UNAVAILABLE; the batches written meanwhile are retried (same key).
	writing := make(chan error, 1)
	go func() { writing <- ingest(5, 6, 7, 8) }()
	s.StopGateway(30 * time.Second)
	time.Sleep(500 * time.Millisecond)
	if err := s.StartGateway(180 * time.Second); err != nil {
		t.Fatal(err)
	}
	phase("SIGTERM, restarted")
	select {
	case err := <-writing:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(120 * time.Second):
		t.Fatal("the writes across the restart did not finish")
	}
	// Both watchers resumed on the new instance before it is killed.
	waitUntil("the watchers resumed", func() bool { return least() >= 2*90 })
	phase("90 documents in, watchers resumed")
	// Killed right after a batch is accepted, while it is being indexed: connections reset,
	// the worker redoes its open transaction.
	if err := ingest(9); err != nil {
		t.Fatal(err)
	}
	s.KillGateway()
	atKill := []int{watchers[0].count(), watchers[1].count()}
	time.Sleep(500 * time.Millisecond)
	if err := s.StartGateway(180 * time.Second); err != nil {
		t.Fatal(err)
	}
	phase(fmt.Sprintf("SIGKILL at %d and %d events, restarted", atKill[0], atKill[1]))
	if atKill[0] >= expected || atKill[1] >= expected {
		t.Errorf("indexing finished before the kill: %v", atKill)
	}
	for _, wr := range watchers {
		select {
		case <-wr.done:
		case <-time.After(240 * time.Second):
			t.Fatal("a watcher did not finish")
		}
	}
	phase("watchers done")
	t.Log(strings.Join(phases, ", "))
	if err := failed(); err != nil {
		t.Fatal(err)
	}
	unique := map[string]bool{}
	for _, id := range ids {
		unique[id] = true
	}
	if len(ids) != docs || len(unique) != docs {
		t.Fatalf("%d ingestions, %d distinct", len(ids), len(unique))
	}
	resumedAt := regexp.MustCompile(`resuming after cursor "(\d+)"`)
	for n, wr := range watchers {
		if len(wr.events) != expected {
			t.Fatalf("watcher %d: %d events", n, len(wr.events))
		}
		seen := map[string]int{}
		last := -1
		for i, e := range wr.events {
			cursor, err := strconv.Atoi(e.Cursor)
			if err != nil || cursor <= last {
				t.Fatalf("watcher %d: cursor %q after %d: out of order or repeated", n, e.Cursor, last)
			}
			last = cursor
			key := e.Ingestion.ID + " " + e.Ingestion.State.String()
			if _, again := seen[key]; again {
				t.Fatalf("watcher %d: %s repeated", n, key)
			}
			seen[key] = i
		}
		for _, id := range ids {
			a, okA := seen[id+" ACCEPTED"]
			x, okX := seen[id+" INDEXED"]
			if !okA || !okX || a > x {
				t.Fatalf("watcher %d: %s: ACCEPTED at %d (%v), INDEXED at %d (%v)", n, id, a, okA, x, okX)
			}
		}
		resumed := map[string]bool{}
		for _, line := range wr.log.all() {
			if m := resumedAt.FindStringSubmatch(line); m != nil {
				resumed[m[1]] = true
			}
		}
		// Each watcher's stream really broke, at both restarts: it resumed from two cursors
		// at least.
		if len(resumed) < 2 {
			t.Errorf("watcher %d resumed after %v only", n, resumed)
		}
		t.Logf("watcher %d: %d events, resumed after cursors %v", n, len(wr.events), keys(resumed))
	}
	t.Logf("the writer retried %d times", len(writes.all()))
	if s.GatewayStarts != startsBefore+2 {
		t.Errorf("%d gateway starts, %d before the test", s.GatewayStarts, startsBefore)
	}
	waitCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	ended, err := connect(t, s).WaitFor(waitCtx, ids)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range ended {
		if i.State != sluice.StateIndexed {
			t.Errorf("%+v", i)
		}
	}
}
