package sluice

import (
	"time"

	"google.golang.org/grpc"
)

// Version is this client's version, sent in its user agent.
const Version = "0.1.0"

type settings struct {
	credentials   *Credentials
	serverName    string
	timeout       time.Duration
	waitTimeout   time.Duration
	retry         RetryPolicy
	watchRetry    RetryPolicy
	batchSize     int
	maxBatchBytes int
	devTenant     string
	dialOptions   []grpc.DialOption
	logf          func(format string, args ...any)
}

func defaults() settings {
	return settings{
		timeout:       30 * time.Second,
		waitTimeout:   120 * time.Second,
		retry:         DefaultRetry,
		watchRetry:    WatchRetry,
		batchSize:     500,
		maxBatchBytes: 8 << 20,
		logf:          func(string, ...any) {},
	}
}

// Option configures a Client.
type Option func(*settings)

// WithCredentials connects with mTLS as these credentials say (New needs it, or
// WithDevTenant).
func WithCredentials(c *Credentials) Option { return func(s *settings) { s.credentials = c } }

// WithServerName is the name the gateway's certificate must carry, when it differs from the
// target's host.
func WithServerName(name string) Option { return func(s *settings) { s.serverName = name } }

// WithTimeout is the deadline of each call whose context has none, retries included
// (0: none). Default 30 s.
func WithTimeout(d time.Duration) Option { return func(s *settings) { s.timeout = d } }

// WithWaitTimeout is the deadline of a call that waits for indexing (Wait, WaitFor) whose
// context has none (0: none). Default 120 s.
func WithWaitTimeout(d time.Duration) Option { return func(s *settings) { s.waitTimeout = d } }

// WithRetry is the retry policy of unary calls. Default DefaultRetry.
func WithRetry(p RetryPolicy) Option { return func(s *settings) { s.retry = p } }

// WithWatchRetry is the reconnect policy of watches (attempts count failures in a row).
// Default WatchRetry.
func WithWatchRetry(p RetryPolicy) Option { return func(s *settings) { s.watchRetry = p } }

// WithBatchSize is the number of documents per IngestBatch call in IngestMany. Default 500.
func WithBatchSize(n int) Option { return func(s *settings) { s.batchSize = n } }

// WithMaxBatchBytes bounds the encoded bytes per IngestBatch call (under the gateway's
// 16 MiB). Default 8 MiB.
func WithMaxBatchBytes(n int) Option { return func(s *settings) { s.maxBatchBytes = n } }

// WithDevTenant is for a plaintext gateway started with --dev-tenant-header only: the tenant
// to act as, sent in the x-sluice-tenant header. Development only.
func WithDevTenant(tenant string) Option { return func(s *settings) { s.devTenant = tenant } }

// WithDialOptions adds gRPC dial options (after the client's own).
func WithDialOptions(options ...grpc.DialOption) Option {
	return func(s *settings) { s.dialOptions = append(s.dialOptions, options...) }
}

// WithLogger receives a line for each retry and each watch reconnect (log.Printf fits).
// Default: none.
func WithLogger(logf func(format string, args ...any)) Option {
	return func(s *settings) {
		if logf != nil {
			s.logf = logf
		}
	}
}

// WriteOption configures one write (Ingest, IngestMany, Delete).
type WriteOption func(*writeSettings)

type writeSettings struct {
	wait      bool
	key       string
	batchSize int
}

// Wait returns only once the documents are INDEXED or FAILED (a deletion DELETED), bounded
// by the context's deadline, else the client's wait timeout.
func Wait() WriteOption { return func(w *writeSettings) { w.wait = true } }

// IdempotencyKey sends this key instead of a fresh one (Ingest and Delete), to make your own
// retries of the call safe as well.
func IdempotencyKey(key string) WriteOption { return func(w *writeSettings) { w.key = key } }

// BatchSize is the number of documents per IngestBatch call of this IngestMany.
func BatchSize(n int) WriteOption { return func(w *writeSettings) { w.batchSize = n } }

func writeOptions(options []WriteOption) writeSettings {
	var w writeSettings
	for _, option := range options {
		option(&w)
	}
	return w
}
