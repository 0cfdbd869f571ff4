// Package sluice is Sluice's Go client: ingest documents, follow their indexing, search them.
//
// The generated stubs are in sluice/sdk/go/sluicev1 (from proto/); this package is the small
// hand-written layer over them: mTLS from PEM files, retries with idempotency keys, Avro JSON
// from maps and structs, batching, a watch that resumes across disconnects, typed results and
// errors.
//
//	client, err := sluice.FromDirectory("127.0.0.1:50051", ".sluice/dev/tls", "demo", "")
//	if err != nil { ... }
//	defer client.Close()
//	doc := sluice.Document{ID: "note-1", Fields: map[string]any{"title": "Note", "text": "Tides follow the moon."}}
//	if _, err := client.Ingest(ctx, doc, sluice.Wait()); err != nil { ... }
//	hits, err := client.Search(ctx, "what moves the tides", 3, nil)
//
// Calls fail with an *Error after retrying what may succeed later (see RetryPolicy); writes
// carry idempotency keys, so a retry never writes twice. Deadlines come from the context; a
// context without one gets the client's timeout.
package sluice

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"sluice/sdk/go/sluicev1"
)

// Client is a Sluice client acting for the tenant its certificate names. It is safe for
// concurrent use; Close it when done.
type Client struct {
	settings settings
	conn     *grpc.ClientConn
	ingest   sluicev1.IngestServiceClient
	search   sluicev1.SearchServiceClient
	schemas  sluicev1.SchemaServiceClient
}

// New connects to target (host:port) as the options say: WithCredentials (the gateway's
// port is mTLS), or WithDevTenant for a plaintext development gateway. It does not wait for
// the connection: the first call does.
func New(target string, options ...Option) (*Client, error) {
	s := defaults()
	for _, option := range options {
		option(&s)
	}
	if s.credentials == nil && s.devTenant == "" {
		return nil, errors.New("sluice: give TLS credentials (the gateway's port is mTLS), or WithDevTenant for a plaintext dev gateway")
	}
	if s.batchSize < 1 || s.maxBatchBytes < 1 {
		return nil, errors.New("sluice: the batch size and max batch bytes must be positive")
	}
	if err := s.retry.Validate(); err != nil {
		return nil, err
	}
	if err := s.watchRetry.Validate(); err != nil {
		return nil, err
	}
	maxBackoff := s.retry.MaxBackoff
	if s.watchRetry.MaxBackoff > maxBackoff {
		maxBackoff = s.watchRetry.MaxBackoff
	}
	if maxBackoff < 200*time.Millisecond {
		maxBackoff = 200 * time.Millisecond
	}
	dial := []grpc.DialOption{
		grpc.WithUserAgent("sluice-client-go/" + Version),
		// A watch stream on a connection that died silently notices within 40 s.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		// gRPC's own reconnect backoff grows to 120 s by default, and calls fail fast
		// meanwhile: keep it within the retry policies', so that a retry after the gateway
		// is back finds a connection.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 200 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: maxBackoff},
			MinConnectTimeout: 20 * time.Second,
		}),
	}
	if s.credentials != nil {
		config, err := s.credentials.tlsConfig(s.serverName)
		if err != nil {
			return nil, err
		}
		dial = append(dial, grpc.WithTransportCredentials(credentials.NewTLS(config)))
	} else {
		dial = append(dial, grpc.WithInsecure())
	}
	conn, err := grpc.Dial(target, append(dial, s.dialOptions...)...)
	if err != nil {
		return nil, fmt.Errorf("sluice: connecting to %s: %w", target, err)
	}
	return &Client{
		settings: s,
		conn:     conn,
		ingest:   sluicev1.NewIngestServiceClient(conn),
		search:   sluicev1.NewSearchServiceClient(conn),
		schemas:  sluicev1.NewSchemaServiceClient(conn),
	}, nil
}

// FromFiles connects with a client certificate and key, and the gateway's CA (empty: the
// system's CAs), from PEM files.
func FromFiles(target, cert, key, ca string, options ...Option) (*Client, error) {
	credentials, err := CredentialsFromFiles(cert, key, ca)
	if err != nil {
		return nil, err
	}
	return New(target, append([]Option{WithCredentials(credentials)}, options...)...)
}

// FromDirectory connects with the certificate `sluice-admin cert client TENANT --out DIR`
// wrote (see CredentialsFromDirectory: tenant empty for the only one there, ca empty for the
// directory's ca.pem or else the system's CAs).
func FromDirectory(target, dir, tenant, ca string, options ...Option) (*Client, error) {
	credentials, err := CredentialsFromDirectory(dir, tenant, ca)
	if err != nil {
		return nil, err
	}
	return New(target, append([]Option{WithCredentials(credentials)}, options...)...)
}

// Close closes the connection; calls in flight fail.
func (c *Client) Close() error { return c.conn.Close() }

// Conn is the underlying connection, for the generated stubs (package sluicev1).
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// outgoing is ctx with the dev tenant header, if any.
func (c *Client) outgoing(ctx context.Context) context.Context {
	if c.settings.devTenant != "" {
		return metadata.AppendToOutgoingContext(ctx, "x-sluice-tenant", c.settings.devTenant)
	}
	return ctx
}

// context is ctx with the dev tenant header, and the default deadline when ctx has none.
func (c *Client) context(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	return withDefaultDeadline(c.outgoing(ctx), timeout)
}

// withDefaultDeadline is ctx with a deadline timeout from now (0: none) when it has none.
func withDefaultDeadline(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	if _, has := ctx.Deadline(); has || timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, timeout)
}

func (c *Client) timeout(wait bool) time.Duration {
	if wait {
		return c.settings.waitTimeout
	}
	return c.settings.timeout
}

// call makes one unary call, retrying as the retry policy says within the deadline.
func (c *Client) call(ctx context.Context, wait bool, method func(context.Context) error) error {
	ctx, cancel := c.context(ctx, c.timeout(wait))
	defer cancel()
	deadline, _ := ctx.Deadline()
	for attempt := 1; ; attempt++ {
		err := method(ctx)
		if err == nil {
			return nil
		}
		failure := asError(err)
		delay, again := c.settings.retry.next(failure, attempt, deadline)
		if !again {
			return failure
		}
		c.settings.logf("sluice: %v (attempt %d); retrying in %.2f s", failure, attempt, delay.Seconds())
		if err := sleep(ctx, delay); err != nil {
			return asError(err)
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// newKey is an idempotency key: one per write, the same on each of its attempts. As the Python
// client's, a random (version 4) UUID in hex, prefixed by the language.
func newKey() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("sluice: no randomness for an idempotency key: " + err.Error())
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return "go-" + hex.EncodeToString(b[:])
}

// Ingest ingests one document, its Fields written as Avro JSON (see AvroJSON).
//
// It returns once the document is durably in Kafka (ACCEPTED), or with Wait once it is
// INDEXED or FAILED (an *Error with code DeadlineExceeded naming the IngestionID, if that
// takes longer than the deadline). The same id replaces the document. The idempotency key is
// a fresh one, kept across retries, unless IdempotencyKey gives your own.
func (c *Client) Ingest(ctx context.Context, doc Document, options ...WriteOption) (Ingestion, error) {
	w := writeOptions(options)
	message, err := doc.message()
	if err != nil {
		return Ingestion{}, err
	}
	key := w.key
	if key == "" {
		key = newKey()
	}
	request := &sluicev1.IngestRequest{Document: message, IdempotencyKey: key, Wait: w.wait}
	var response *sluicev1.IngestResponse
	err = c.call(ctx, w.wait, func(ctx context.Context) (err error) {
		response, err = c.ingest.Ingest(ctx, request)
		return err
	})
	if err != nil {
		return Ingestion{}, err
	}
	return ingestionOf(response.GetIngestion()), nil
}

// IngestMany ingests documents in IngestBatch calls of at most the batch size (BatchSize,
// else the client's) and max batch bytes; each call is one Kafka transaction, all of its
// documents accepted or none, with a key of its own.
//
// It returns the ingestions in order; with Wait, as they ended. When a call fails, the
// *Error's Accepted holds the ingestions of the calls before it.
func (c *Client) IngestMany(ctx context.Context, docs []Document, options ...WriteOption) ([]Ingestion, error) {
	w := writeOptions(options)
	size := w.batchSize
	if size <= 0 {
		size = c.settings.batchSize
	}
	groups, err := batches(docs, size, c.settings.maxBatchBytes)
	if err != nil {
		return nil, err
	}
	var accepted []Ingestion
	for _, group := range groups {
		request := &sluicev1.IngestBatchRequest{Documents: group, IdempotencyKey: newKey()}
		var response *sluicev1.IngestBatchResponse
		err := c.call(ctx, false, func(ctx context.Context) (err error) {
			response, err = c.ingest.IngestBatch(ctx, request)
			return err
		})
		if err != nil {
			failure := asError(err)
			failure.Accepted = append([]Ingestion(nil), accepted...)
			return nil, failure
		}
		for _, m := range response.GetIngestions() {
			accepted = append(accepted, ingestionOf(m))
		}
	}
	if !w.wait {
		return accepted, nil
	}
	ids := make([]string, len(accepted))
	for i, a := range accepted {
		ids[i] = a.ID
	}
	ended, err := c.WaitFor(ctx, ids)
	if err != nil {
		return nil, err
	}
	for i, a := range accepted {
		accepted[i] = ended[a.ID]
	}
	return accepted, nil
}

// batches is the documents as messages, in order, in groups of at most size and maxBytes. A
// single document larger than maxBytes goes alone (the gateway says whether it fits).
func batches(docs []Document, size, maxBytes int) ([][]*sluicev1.Document, error) {
	var out [][]*sluicev1.Document
	var batch []*sluicev1.Document
	used := 0
	for i, doc := range docs {
		message, err := doc.message()
		if err != nil {
			return nil, fmt.Errorf("document %d (%q): %w", i, doc.ID, err)
		}
		// Each repeated element costs its length prefix and tag too: a few bytes.
		cost := proto.Size(message) + 8
		if len(batch) > 0 && (len(batch) == size || used+cost > maxBytes) {
			out = append(out, batch)
			batch, used = nil, 0
		}
		batch = append(batch, message)
		used += cost
	}
	if len(batch) > 0 {
		out = append(out, batch)
	}
	return out, nil
}

// Delete removes a document and its chunks (ordered after every earlier ingest of it).
// Options: Wait, IdempotencyKey.
func (c *Client) Delete(ctx context.Context, documentID string, options ...WriteOption) (Ingestion, error) {
	w := writeOptions(options)
	key := w.key
	if key == "" {
		key = newKey()
	}
	request := &sluicev1.DeleteDocumentRequest{DocumentId: documentID, IdempotencyKey: key, Wait: w.wait}
	var response *sluicev1.DeleteDocumentResponse
	err := c.call(ctx, w.wait, func(ctx context.Context) (err error) {
		response, err = c.ingest.DeleteDocument(ctx, request)
		return err
	})
	if err != nil {
		return Ingestion{}, err
	}
	return ingestionOf(response.GetIngestion()), nil
}

// GetIngestion is the current state of one ingestion.
func (c *Client) GetIngestion(ctx context.Context, ingestionID string) (Ingestion, error) {
	var response *sluicev1.Ingestion
	err := c.call(ctx, false, func(ctx context.Context) (err error) {
		response, err = c.ingest.GetIngestion(ctx, &sluicev1.GetIngestionRequest{IngestionId: ingestionID})
		return err
	})
	if err != nil {
		return Ingestion{}, err
	}
	return ingestionOf(response), nil
}

// Search returns the topK (0: 10) chunks closest in meaning to query, best first; filters are
// attribute values every hit must have.
func (c *Client) Search(ctx context.Context, query string, topK int, filters map[string]string) ([]Hit, error) {
	if topK <= 0 {
		topK = 10
	}
	request := &sluicev1.SearchRequest{Query: query, TopK: uint32(topK), AttributeFilter: filters}
	var response *sluicev1.SearchResponse
	err := c.call(ctx, false, func(ctx context.Context) (err error) {
		response, err = c.search.Search(ctx, request)
		return err
	})
	if err != nil {
		return nil, err
	}
	hits := make([]Hit, 0, len(response.GetHits()))
	for _, h := range response.GetHits() {
		hits = append(hits, hitOf(h))
	}
	return hits, nil
}

// RegisterSchema registers a version of a document schema (or returns the equal one
// registered). definition is the Avro schema: JSON text (a string, []byte or
// json.RawMessage), or a value that encoding/json makes it from.
func (c *Client) RegisterSchema(ctx context.Context, name string, definition any) (Schema, error) {
	var text string
	switch d := definition.(type) {
	case string:
		text = d
	case []byte:
		text = string(d)
	case json.RawMessage:
		text = string(d)
	default:
		encoded, err := json.Marshal(definition)
		if err != nil {
			return Schema{}, fmt.Errorf("sluice: the schema definition: %w", err)
		}
		text = string(encoded)
	}
	var response *sluicev1.RegisterSchemaResponse
	err := c.call(ctx, false, func(ctx context.Context) (err error) {
		response, err = c.schemas.RegisterSchema(ctx, &sluicev1.RegisterSchemaRequest{Name: name, Definition: text})
		return err
	})
	if err != nil {
		return Schema{}, err
	}
	return schemaOf(response.GetSchema()), nil
}

// GetSchema is one version of a schema (0: the latest).
func (c *Client) GetSchema(ctx context.Context, name string, version int32) (Schema, error) {
	var response *sluicev1.Schema
	err := c.call(ctx, false, func(ctx context.Context) (err error) {
		response, err = c.schemas.GetSchema(ctx, &sluicev1.GetSchemaRequest{Name: name, Version: version})
		return err
	})
	if err != nil {
		return Schema{}, err
	}
	return schemaOf(response), nil
}

// ListSchemas is the names of the tenant's schemas.
func (c *Client) ListSchemas(ctx context.Context) ([]string, error) {
	var response *sluicev1.ListSchemasResponse
	err := c.call(ctx, false, func(ctx context.Context) (err error) {
		response, err = c.schemas.ListSchemas(ctx, &sluicev1.ListSchemasRequest{})
		return err
	})
	if err != nil {
		return nil, err
	}
	return append([]string(nil), response.GetNames()...), nil
}
