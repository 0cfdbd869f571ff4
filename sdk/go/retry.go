package sluice

import (
	"errors"
	"math"
	"math/rand"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
)

// RetryPolicy retries UNAVAILABLE, ABORTED and RESOURCE_EXHAUSTED, bounded in attempts and
// time.
//
// The n-th retry waits a random time between half and all of
// min(MaxBackoff, InitialBackoff * Multiplier^(n-1)); when the gateway sent a
// google.rpc.RetryInfo, at least its delay instead (plus up to Jitter of it, so that clients
// told the same delay do not all come back at once). RESOURCE_EXHAUSTED without a RetryInfo is
// not retried: the gateway says so when waiting would not help (a request over a size limit, a
// batch larger than a second's worth of the quota). No retry outlives the call's deadline.
//
// Writes are safe to retry: the client sends every Ingest, IngestBatch and DeleteDocument with
// an idempotency key, the same on each attempt.
type RetryPolicy struct {
	MaxAttempts    int
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	Multiplier     float64
	Jitter         float64
	// The codes to retry; nil: UNAVAILABLE, ABORTED and RESOURCE_EXHAUSTED.
	Codes []codes.Code
}

// DefaultRetry is the policy of unary calls unless WithRetry says otherwise.
var DefaultRetry = RetryPolicy{MaxAttempts: 5, InitialBackoff: 100 * time.Millisecond, MaxBackoff: 5 * time.Second, Multiplier: 2, Jitter: 0.2}

// WatchRetry is the policy of watch reconnects unless WithWatchRetry says otherwise: patient,
// so that a watch outlives gateway restarts (about a minute of trying). Its attempts count
// failures in a row.
var WatchRetry = RetryPolicy{MaxAttempts: 20, InitialBackoff: 200 * time.Millisecond, MaxBackoff: 5 * time.Second, Multiplier: 2, Jitter: 0.2}

// NoRetry never retries.
var NoRetry = RetryPolicy{MaxAttempts: 1, Multiplier: 1}

var retryable = []codes.Code{codes.Unavailable, codes.Aborted, codes.ResourceExhausted}

// Validate says whether p can be used.
func (p RetryPolicy) Validate() error {
	if p.MaxAttempts < 1 {
		return errors.New("sluice: RetryPolicy.MaxAttempts must be at least 1")
	}
	if p.InitialBackoff < 0 || p.MaxBackoff < 0 || p.Multiplier < 1 || p.Jitter < 0 {
		return errors.New("sluice: RetryPolicy backoffs and jitter must not be negative, nor Multiplier below 1")
	}
	return nil
}

// Retries says whether a call that failed with err on its attempt-th try (from 1) goes again.
func (p RetryPolicy) Retries(err *Error, attempt int) bool {
	if attempt >= p.MaxAttempts || !p.retriesCode(err.Code) {
		return false
	}
	return err.Code != codes.ResourceExhausted || err.RetryInfo
}

func (p RetryPolicy) retriesCode(code codes.Code) bool {
	list := p.Codes
	if list == nil {
		list = retryable
	}
	for _, c := range list {
		if c == code {
			return true
		}
	}
	return false
}

// backoff is the wait after the attempt-th try failed with err; r is uniform in [0, 1).
func (p RetryPolicy) backoff(err *Error, attempt int, r float64) time.Duration {
	if err.RetryInfo {
		return time.Duration(float64(err.RetryDelay) * (1 + p.Jitter*r))
	}
	capped := math.Min(float64(p.MaxBackoff), float64(p.InitialBackoff)*math.Pow(p.Multiplier, float64(attempt-1)))
	return time.Duration(capped/2 + capped/2*r)
}

// nextDelay is the wait before the next attempt, and false when the call should fail with
// err instead; a retry that could only start at or after deadline (zero: none) is not made.
func (p RetryPolicy) nextDelay(err *Error, attempt int, deadline, now time.Time, r float64) (time.Duration, bool) {
	if !p.Retries(err, attempt) {
		return 0, false
	}
	delay := p.backoff(err, attempt, r)
	if !deadline.IsZero() && !now.Add(delay).Before(deadline) {
		return 0, false
	}
	return delay, true
}

func (p RetryPolicy) next(err *Error, attempt int, deadline time.Time) (time.Duration, bool) {
	return p.nextDelay(err, attempt, deadline, time.Now(), jitter())
}

// Jitter apart from other processes' (math/rand's global source is the same in each).
var (
	jitterMu   sync.Mutex
	jitterRand = rand.New(rand.NewSource(time.Now().UnixNano()))
)

func jitter() float64 {
	jitterMu.Lock()
	defer jitterMu.Unlock()
	return jitterRand.Float64()
}
