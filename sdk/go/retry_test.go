package sluice

// The retry policy, alone and over the wire (fake gateway): bounded, honouring RetryInfo, one
// idempotency key per write.

import (
	"context"
	"errors"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func failure(code codes.Code, retryDelay ...time.Duration) *Error {
	e := &Error{Code: code, Message: "x"}
	if len(retryDelay) > 0 {
		e.RetryInfo, e.RetryDelay = true, retryDelay[0]
	}
	return e
}

func TestWhichCodesAreRetried(t *testing.T) {
	p := DefaultRetry
	for _, e := range []*Error{failure(codes.Unavailable), failure(codes.Aborted), failure(codes.ResourceExhausted, 500*time.Millisecond)} {
		if !p.Retries(e, 1) {
			t.Errorf("%v is not retried", e)
		}
	}
	// Without RetryInfo the gateway says waiting will not help (a too-large request or batch).
	if p.Retries(failure(codes.ResourceExhausted), 1) {
		t.Error("RESOURCE_EXHAUSTED without RetryInfo is retried")
	}
	for _, code := range []codes.Code{codes.InvalidArgument, codes.NotFound, codes.DeadlineExceeded, codes.PermissionDenied, codes.FailedPrecondition} {
		if p.Retries(failure(code, time.Second), 1) {
			t.Errorf("%v is retried", code)
		}
	}
}

func TestAttemptsAreBounded(t *testing.T) {
	p := DefaultRetry
	p.MaxAttempts = 3
	if !p.Retries(failure(codes.Unavailable), 2) || p.Retries(failure(codes.Unavailable), 3) {
		t.Error("3 attempts are not 3")
	}
	if NoRetry.Retries(failure(codes.Unavailable), 1) {
		t.Error("NoRetry retries")
	}
	if (RetryPolicy{MaxAttempts: 0, Multiplier: 1}).Validate() == nil {
		t.Error("0 attempts validate")
	}
	if _, err := New("127.0.0.1:1", WithDevTenant("t"), WithRetry(RetryPolicy{MaxAttempts: 1})); err == nil {
		t.Error("a policy with multiplier 0 is taken")
	}
}

func near(a, b time.Duration) bool { d := a - b; return d < time.Microsecond && d > -time.Microsecond }

func TestBackoffGrowsIsCappedAndJittered(t *testing.T) {
	p := RetryPolicy{MaxAttempts: 9, InitialBackoff: 100 * time.Millisecond, MaxBackoff: time.Second, Multiplier: 2, Jitter: 0.2}
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for n, w := range want {
		w *= time.Millisecond
		if high := p.backoff(failure(codes.Unavailable), n+1, 1); !near(high, w) {
			t.Errorf("attempt %d: %v, want %v", n+1, high, w)
		}
		if low := p.backoff(failure(codes.Unavailable), n+1, 0); !near(low, w/2) {
			t.Errorf("attempt %d: %v, want %v", n+1, low, w/2)
		}
	}
}

func TestRetryInfoIsAFloorWithJitterAboveIt(t *testing.T) {
	p := RetryPolicy{MaxAttempts: 5, MaxBackoff: 500 * time.Millisecond, Multiplier: 2, Jitter: 0.2}
	if d := p.backoff(failure(codes.Unavailable, 3*time.Second), 1, 0); !near(d, 3*time.Second) {
		t.Error(d)
	}
	if d := p.backoff(failure(codes.Unavailable, 3*time.Second), 1, 1); !near(d, 3600*time.Millisecond) {
		t.Error(d)
	}
}

func TestNoRetryPastTheDeadline(t *testing.T) {
	now := time.Unix(100, 0)
	e := failure(codes.Unavailable, time.Second)
	if _, ok := DefaultRetry.nextDelay(e, 1, now.Add(500*time.Millisecond), now, 0); ok {
		t.Error("a retry after the deadline")
	}
	if d, ok := DefaultRetry.nextDelay(e, 1, now.Add(2*time.Second), now, 0); !ok || !near(d, time.Second) {
		t.Error(d, ok)
	}
	if d, ok := DefaultRetry.nextDelay(e, 1, time.Time{}, now, 0); !ok || !near(d, time.Second) {
		t.Error(d, ok)
	}
}

var pythonLikeKey = regexp.MustCompile(`^go-[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}$`)

func TestIngestRetriesWithOneKeyAndWritesOnce(t *testing.T) {
	fake, target := startFake(t)
	fake.refusals = []*refusal{
		{code: codes.Aborted, message: "transaction aborted; nothing was written, retry", retryDelay: 100 * time.Millisecond},
		{code: codes.Unavailable, message: "Kafka is unavailable", retryDelay: 100 * time.Millisecond},
	}
	var logged []string
	client := connectFake(t, target, WithLogger(func(format string, args ...any) {
		logged = append(logged, strings.TrimSpace(format))
	}))
	started := time.Now()
	got, err := client.Ingest(context.Background(), Document{ID: "doc-1", Fields: map[string]any{"text": "hello"}})
	elapsed := time.Since(started)
	if err != nil || got.DocumentID != "doc-1" {
		t.Fatal(got, err)
	}
	keys := fake.writeKeys
	if len(keys) != 3 || keys[0] != keys[1] || keys[1] != keys[2] || !pythonLikeKey.MatchString(keys[0]) {
		t.Errorf("keys %q", keys)
	}
	if fake.writes != 1 {
		t.Errorf("%d writes", fake.writes)
	}
	if elapsed < 200*time.Millisecond {
		t.Errorf("the RetryInfo delays were not waited out: %v", elapsed)
	}
	if len(logged) != 2 {
		t.Errorf("logged %q", logged)
	}
	if len(fake.tenants) != 3 || fake.tenants[0] != "t" {
		t.Errorf("tenant headers %q", fake.tenants)
	}
}

func TestARepeatedCallWithTheSameKeyIsNotASecondWrite(t *testing.T) {
	fake, target := startFake(t)
	client := connectFake(t, target)
	ctx := context.Background()
	doc := Document{ID: "doc-1", Fields: map[string]any{"text": "hello"}}
	first, _ := client.Ingest(ctx, doc, IdempotencyKey("mine-1"))
	again, _ := client.Ingest(ctx, doc, IdempotencyKey("mine-1"))
	other, _ := client.Ingest(ctx, doc)
	if first.ID != again.ID || again.ID == other.ID || fake.writes != 2 {
		t.Error(first, again, other, fake.writes)
	}
}

func TestQuotaWithoutRetryInfoFailsAtOnceWithTheQuota(t *testing.T) {
	fake, target := startFake(t)
	fake.refusals = []*refusal{{code: codes.ResourceExhausted, message: "batch over a second of documents_per_second", quota: "documents_per_second"}}
	_, err := connectFake(t, target).Ingest(context.Background(), Document{ID: "doc-1", Fields: map[string]any{"text": "hello"}})
	var e *Error
	if !errors.As(err, &e) || e.Code != codes.ResourceExhausted || len(e.QuotaViolations) != 1 || e.QuotaViolations[0].Subject != "documents_per_second" {
		t.Fatal(err)
	}
	if len(fake.writeKeys) != 1 {
		t.Errorf("%d attempts", len(fake.writeKeys))
	}
}

func TestGivesUpAfterMaxAttemptsWithTheLastError(t *testing.T) {
	fake, target := startFake(t)
	for i := 0; i < 10; i++ {
		fake.refusals = append(fake.refusals, &refusal{code: codes.Aborted, message: "aborted", retryDelay: 10 * time.Millisecond})
	}
	policy := DefaultRetry
	policy.MaxAttempts = 3
	_, err := connectFake(t, target, WithRetry(policy)).Ingest(context.Background(), Document{ID: "doc-1", Fields: map[string]any{"text": "hello"}})
	var e *Error
	if !errors.As(err, &e) || e.Code != codes.Aborted || !e.RetryInfo || e.RetryDelay != 10*time.Millisecond {
		t.Fatal(err)
	}
	if len(fake.writeKeys) != 3 || status.Code(err) != codes.Aborted {
		t.Errorf("%d attempts, code %v", len(fake.writeKeys), status.Code(err))
	}
}

func TestInvalidArgumentIsNotRetried(t *testing.T) {
	fake, target := startFake(t)
	fake.refusals = []*refusal{{code: codes.InvalidArgument, message: "bad", fields: [][2]string{{"document.document_id", "required"}}}}
	_, err := connectFake(t, target).Ingest(context.Background(), Document{ID: "", Fields: map[string]any{"text": "hello"}})
	var e *Error
	if !errors.As(err, &e) || e.Code != codes.InvalidArgument || e.FieldViolations[0].Field != "document.document_id" {
		t.Fatal(err)
	}
	if len(fake.writeKeys) != 1 {
		t.Errorf("%d attempts", len(fake.writeKeys))
	}
}

func TestTheContextsDeadlineBoundsTheRetries(t *testing.T) {
	fake, target := startFake(t)
	fake.refusals = []*refusal{{code: codes.Unavailable, message: "down", retryDelay: 5 * time.Second}}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	started := time.Now()
	_, err := connectFake(t, target).Ingest(ctx, Document{ID: "d", Fields: map[string]any{"text": "x"}})
	if status.Code(err) != codes.Unavailable || time.Since(started) > 400*time.Millisecond {
		t.Errorf("%v after %v: a retry it could not finish in time was waited for", err, time.Since(started))
	}
	// Cancelling the context while a retry waits ends the call at once, as Canceled.
	fake.refusals = []*refusal{{code: codes.Unavailable, message: "down", retryDelay: 5 * time.Second}}
	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	started = time.Now()
	_, err = connectFake(t, target).Ingest(ctx, Document{ID: "d", Fields: map[string]any{"text": "x"}})
	if !errors.Is(err, context.Canceled) || status.Code(err) != codes.Canceled || time.Since(started) > 2*time.Second {
		t.Errorf("%v after %v", err, time.Since(started))
	}
}

func TestAGatewayThatIsNotThereIsUnavailableAfterBoundedTries(t *testing.T) {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	target := listener.Addr().String()
	listener.Close()
	policy := DefaultRetry
	policy.MaxAttempts, policy.InitialBackoff = 3, 50*time.Millisecond
	client := connectFake(t, target, WithRetry(policy), WithTimeout(5*time.Second))
	started := time.Now()
	if _, err := client.Search(context.Background(), "anything", 3, nil); status.Code(err) != codes.Unavailable {
		t.Error(err)
	}
	if time.Since(started) > 5*time.Second {
		t.Error(time.Since(started))
	}
}
