package sluice

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc/codes"

	"sluice/sdk/go/sluicev1"
)

// WatchOptions says what a watch follows.
type WatchOptions struct {
	// Only these ingestions: their current states first, then their events, ending once all
	// have finished. Empty: every ingestion of the tenant, until the watch is closed.
	IngestionIDs []string
	// Resume after this event (an IngestionEvent's Cursor). Empty: from now on (with
	// IngestionIDs, their current states first).
	AfterCursor string
}

// Watch follows the tenant's ingestion events across disconnects: none missed, none
// repeated. Iterate it like a bufio.Scanner:
//
//	w := client.Watch(ctx, sluice.WatchOptions{IngestionIDs: ids})
//	defer w.Close()
//	for w.Next() {
//		event := w.Event()
//		...
//	}
//	if err := w.Err(); err != nil { ... }
//
// A broken stream (a gateway restart, a reset connection) is reopened after the last cursor
// received (the watch retry policy bounds the reconnects in a row). With IngestionIDs it
// starts with their current states and ends once all have finished; a stream that breaks
// before those states have all arrived starts over, and no state is handed out twice. An
// unfiltered watch without AfterCursor starts "from now": pass the cursor of an event you
// have to be sure of the start. The context bounds the whole watch (no default deadline);
// an *Error with code OutOfRange: the cursor is older than the gateway keeps events.
type Watch struct {
	client   *Client
	ctx      context.Context
	cancel   context.CancelFunc
	state    *watchState
	stream   sluicev1.IngestService_WatchIngestionsClient
	cancelS  context.CancelFunc
	failures int
	event    IngestionEvent
	err      error
	done     bool
}

// Watch starts a watch; its first stream opens on the first Next.
func (c *Client) Watch(ctx context.Context, options WatchOptions) *Watch {
	ctx, cancel := context.WithCancel(c.outgoing(ctx))
	return &Watch{client: c, ctx: ctx, cancel: cancel, state: newWatchState(options.IngestionIDs, options.AfterCursor)}
}

// Next waits for the next event; false when the watch has ended (all the watched
// ingestions finished, or an error: see Err).
func (w *Watch) Next() bool {
	if w.done {
		return false
	}
	policy := w.client.settings.watchRetry
	deadline, _ := w.ctx.Deadline()
	for {
		if w.stream == nil {
			streamCtx, cancel := context.WithCancel(w.ctx)
			stream, err := w.client.ingest.WatchIngestions(streamCtx, w.state.request())
			if err != nil {
				cancel()
				if !w.retry(policy, asError(err), deadline) {
					return false
				}
				continue
			}
			w.stream, w.cancelS = stream, cancel
		}
		message, err := w.stream.Recv()
		if err == nil {
			w.failures = 0
			if event, ok := w.state.accept(message); ok {
				w.event = event
				return true
			}
			continue
		}
		w.closeStream()
		var failure *Error
		if errors.Is(err, io.EOF) {
			if w.state.finished() {
				w.finish(nil)
				return false
			}
			failure = &Error{Code: codes.Unavailable, Message: "the watch stream ended early"}
		} else {
			failure = asError(err)
		}
		if !w.retry(policy, failure, deadline) {
			return false
		}
	}
}

// retry waits before the next stream, or ends the watch with failure (false).
func (w *Watch) retry(policy RetryPolicy, failure *Error, deadline time.Time) bool {
	if w.ctx.Err() != nil {
		w.finish(asError(w.ctx.Err()))
		return false
	}
	w.failures++
	delay, again := policy.next(failure, w.failures, deadline)
	if !again {
		w.finish(watchError(policy, failure, w.failures))
		return false
	}
	w.client.settings.logf("sluice: watch stream broke (%v); resuming after cursor %q in %.2f s", failure, w.state.cursor, delay.Seconds())
	if err := sleep(w.ctx, delay); err != nil {
		w.finish(asError(err))
		return false
	}
	return true
}

// watchError is what a watch that cannot go on ends with: failure, or DeadlineExceeded when
// only its deadline kept it from trying again (the watch's deadline is what ended it).
func watchError(policy RetryPolicy, failure *Error, failures int) *Error {
	if !policy.Retries(failure, failures) || failure.Code == codes.DeadlineExceeded {
		return failure
	}
	return &Error{
		Code:    codes.DeadlineExceeded,
		Message: fmt.Sprintf("the watch's deadline passed while it was reconnecting (%v)", failure),
		cause:   failure,
	}
}

func (w *Watch) closeStream() {
	if w.cancelS != nil {
		w.cancelS()
	}
	w.stream, w.cancelS = nil, nil
}

func (w *Watch) finish(err error) {
	w.done = true
	if err != nil {
		w.err = err
	}
	w.closeStream()
	w.cancel()
}

// Event is the event the last Next returned true for.
func (w *Watch) Event() IngestionEvent { return w.event }

// Err is why the watch ended: nil when it ended because all its ingestions finished (or it
// was closed).
func (w *Watch) Err() error { return w.err }

// Cursor is the cursor of the last event received: a later watch resumes after it.
func (w *Watch) Cursor() string { return w.state.cursor }

// Close ends the watch (its stream is cancelled); Next returns false from then on. Call it
// from the goroutine that calls Next; to end a Next that is waiting, cancel its context.
func (w *Watch) Close() {
	if !w.done {
		w.finish(nil)
	}
}

// watchState is where a watch is, so that a new stream continues it: no event missed or
// repeated.
//
// Every event carries a cursor; a new stream asks for the events after the last one. With
// ingestion ids and no cursor, a stream starts with each ingestion's current state, all
// carrying the same cursor: a stream that broke before all of them arrived starts over
// without a cursor, and states already handed out (an ingestion is ACCEPTED, then ends once)
// are not handed out again.
type watchState struct {
	ids        []string
	cursor     string
	inSnapshot bool
	delivered  map[[2]string]bool
	ended      map[string]Ingestion
	received   int
}

func newWatchState(ids []string, afterCursor string) *watchState {
	seen := map[string]bool{}
	var unique []string
	for _, id := range ids {
		if !seen[id] {
			seen[id] = true
			unique = append(unique, id)
		}
	}
	return &watchState{
		ids:        unique,
		cursor:     afterCursor,
		inSnapshot: len(unique) > 0 && afterCursor == "",
		delivered:  map[[2]string]bool{},
		ended:      map[string]Ingestion{},
	}
}

// request is the request for the next stream.
func (s *watchState) request() *sluicev1.WatchIngestionsRequest {
	s.received = 0
	cursor := s.cursor
	if s.inSnapshot {
		cursor = ""
	}
	return &sluicev1.WatchIngestionsRequest{IngestionIds: s.ids, AfterCursor: cursor}
}

// accept is the event to hand out, and false for one already handed out.
func (s *watchState) accept(message *sluicev1.IngestionEvent) (IngestionEvent, bool) {
	event := eventOf(message)
	s.received++
	if s.inSnapshot && s.received >= len(s.ids) {
		s.inSnapshot = false
	}
	s.cursor = event.Cursor
	if len(s.ids) == 0 {
		return event, true
	}
	ingestion := event.Ingestion
	if ingestion.Finished() {
		s.ended[ingestion.ID] = ingestion
	}
	key := [2]string{ingestion.ID, ingestion.State.String()}
	if s.delivered[key] {
		return IngestionEvent{}, false
	}
	s.delivered[key] = true
	return event, true
}

// finished says whether all the watched ingestions have ended (never, for an unfiltered
// watch).
func (s *watchState) finished() bool { return len(s.ids) > 0 && len(s.ended) == len(s.ids) }

// WaitFor waits until every ingestion has finished and returns them by id. The context's
// deadline bounds it, else the client's wait timeout; when that passes first it returns a
// *WaitTimeout with what finished and what is pending.
func (c *Client) WaitFor(ctx context.Context, ingestionIDs []string) (map[string]Ingestion, error) {
	ids := newWatchState(ingestionIDs, "").ids
	ctx, cancel := withDefaultDeadline(ctx, c.settings.waitTimeout)
	defer cancel()
	finished := map[string]Ingestion{}
	for start := 0; start < len(ids); start += c.settings.batchSize {
		end := start + c.settings.batchSize
		if end > len(ids) {
			end = len(ids)
		}
		w := c.Watch(ctx, WatchOptions{IngestionIDs: ids[start:end]})
		for w.Next() {
		}
		for id, ingestion := range w.state.ended {
			finished[id] = ingestion
		}
		if err := w.Err(); err != nil {
			if asError(err).Code != codes.DeadlineExceeded {
				return nil, err
			}
			var pending []string
			for _, id := range ids {
				if _, ok := finished[id]; !ok {
					pending = append(pending, id)
				}
			}
			return nil, newWaitTimeout(finished, pending)
		}
	}
	return finished, nil
}
