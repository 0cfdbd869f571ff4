//! Watching ingestions across disconnects: a stream that resumes after its last cursor.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{Future, Stream, StreamExt};
use tokio::time::{Instant, Sleep};
use tonic::Streaming;

use crate::client::{deadline_after, Client};
use crate::error::{Code, Error, WaitTimeout};
use crate::proto;
use crate::proto::ingest_service_client::IngestServiceClient;
use crate::retry::{random, RetryPolicy};
use crate::types::{Ingestion, IngestionEvent, IngestionState};

/// Where a watch is, so that a new stream continues it: no event missed or repeated.
///
/// Every event carries a cursor; a new stream asks for the events after the last one. With
/// ingestion ids and no cursor, a stream starts with each ingestion's current state, all
/// carrying the same cursor: a stream that broke before all of them arrived starts over
/// without a cursor, and states already handed out (an ingestion is accepted, then ends
/// once) are not handed out again.
///
/// An unfiltered watch started without a cursor begins "from now on": events before its first
/// one are not replayed if the very first stream breaks before any event arrives.
#[derive(Debug, Default)]
pub(crate) struct WatchState {
    ids: Vec<String>,
    cursor: String,
    in_snapshot: bool,
    delivered: HashSet<(String, IngestionState)>,
    pub(crate) finished: HashMap<String, Ingestion>,
    received: usize,
}

fn distinct<S: Into<String>>(ids: impl IntoIterator<Item = S>) -> Vec<String> {
    let mut seen = HashSet::new();
    ids.into_iter()
        .map(Into::into)
        .filter(|id| seen.insert(id.clone()))
        .collect()
}

impl WatchState {
    pub(crate) fn new(ids: Vec<String>, after_cursor: String) -> Self {
        let ids = distinct(ids);
        Self {
            in_snapshot: !ids.is_empty() && after_cursor.is_empty(),
            ids,
            cursor: after_cursor,
            ..Self::default()
        }
    }

    /// The request for the next stream.
    pub(crate) fn request(&mut self) -> proto::WatchIngestionsRequest {
        self.received = 0;
        proto::WatchIngestionsRequest {
            ingestion_ids: self.ids.clone(),
            after_cursor: if self.in_snapshot {
                String::new()
            } else {
                self.cursor.clone()
            },
        }
    }

    /// The event to hand out, or `None` for one already handed out.
    pub(crate) fn accept(&mut self, message: proto::IngestionEvent) -> Option<IngestionEvent> {
        let event = IngestionEvent::from(message);
        self.received += 1;
        if self.in_snapshot && self.received >= self.ids.len() {
            self.in_snapshot = false;
        }
        self.cursor.clone_from(&event.cursor);
        if self.ids.is_empty() {
            return Some(event);
        }
        let ingestion = &event.ingestion;
        if ingestion.is_finished() {
            self.finished
                .insert(ingestion.ingestion_id.clone(), ingestion.clone());
        }
        let key = (ingestion.ingestion_id.clone(), ingestion.state);
        self.delivered.insert(key).then_some(event)
    }

    /// All the watched ingestions have ended (never, for an unfiltered watch).
    pub(crate) fn done(&self) -> bool {
        !self.ids.is_empty() && self.finished.len() == self.ids.len()
    }
}

type Opening =
    BoxFuture<'static, Result<tonic::Response<Streaming<proto::IngestionEvent>>, tonic::Status>>;

enum Phase {
    Start,
    Opening(Opening),
    Open(Box<Streaming<proto::IngestionEvent>>),
    Backoff(Pin<Box<Sleep>>),
    Done,
}

/// The tenant's ingestion events ([`Client::watch`]), a [`Stream`] that resumes across
/// disconnects: a broken stream (a restart, a reset connection) is reopened after the last
/// cursor received, so that no event is missed or repeated.
///
/// - Unfiltered (the default): every ingestion's events, from now on (or after
///   [`after_cursor`](Self::after_cursor)), until you stop polling. "From now on" starts when
///   the first stream opens: pass the cursor of an event you have to be sure of the start.
/// - With [`ingestion_ids`](Self::ingestion_ids): their current states first, then their
///   events; the stream ends once all have finished. A stream that breaks before those states
///   have all arrived starts over, and no state is handed out twice.
///
/// [`watch_retry`](crate::ClientBuilder::watch_retry) bounds the reconnects in a row; the
/// last error ends the stream (then `None`). `OutOfRange`: the cursor is older than the
/// gateway keeps events. Set options before the first poll.
///
/// ```no_run
/// # async fn run(sluice: sluice_client::Client, ids: Vec<String>) -> Result<(), sluice_client::Error> {
/// use futures::StreamExt;
///
/// let mut events = sluice.watch().ingestion_ids(ids);
/// while let Some(event) = events.next().await {
///     let event = event?;
///     println!("{} {}", event.ingestion.document_id, event.ingestion.state);
/// }
/// # Ok(()) }
/// ```
#[must_use = "a watch does nothing until polled"]
pub struct Watch {
    client: Client,
    state: WatchState,
    deadline: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
    failures: u32,
    reconnects: u64,
    phase: Phase,
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("state", &self.state)
            .field("deadline", &self.deadline)
            .field("failures", &self.failures)
            .field("reconnects", &self.reconnects)
            .finish_non_exhaustive()
    }
}

impl Watch {
    pub(crate) fn new(
        client: &Client,
        ids: Vec<String>,
        after_cursor: String,
        deadline: Option<Instant>,
    ) -> Self {
        Self {
            client: client.clone(),
            state: WatchState::new(ids, after_cursor),
            deadline,
            timer: None,
            failures: 0,
            reconnects: 0,
            phase: Phase::Start,
        }
    }

    /// Only these ingestions (none: all of the tenant's): their current states first, then
    /// their events, until all have ended.
    pub fn ingestion_ids<S: Into<String>>(self, ids: impl IntoIterator<Item = S>) -> Self {
        let cursor = self.state.cursor.clone();
        Self {
            state: WatchState::new(ids.into_iter().map(Into::into).collect(), cursor),
            ..self
        }
    }

    /// Resume after this event ([`IngestionEvent::cursor`]).
    pub fn after_cursor(self, cursor: impl Into<String>) -> Self {
        let ids = self.state.ids.clone();
        Self {
            state: WatchState::new(ids, cursor.into()),
            ..self
        }
    }

    /// A deadline for the whole watch, from now (`None`, the default: none). When it passes
    /// the stream yields `DeadlineExceeded` and ends.
    pub fn timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.deadline = deadline_after(timeout.into());
        self.timer = None;
        self
    }

    /// The cursor of the last event received: where a new watch would resume.
    pub fn cursor(&self) -> &str {
        &self.state.cursor
    }

    /// How many times a broken stream was reopened.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// Counts a failure: backs off before reopening, or gives up with the error to yield.
    fn fail(&mut self, error: Error) -> Option<Error> {
        self.failures += 1;
        let policy = &self.client.settings().watch_retry;
        match policy.next_delay(
            &error,
            self.failures,
            self.deadline,
            Instant::now(),
            random(),
        ) {
            Some(delay) => {
                tracing::info!(
                    target: "sluice_client",
                    "watch stream broke ({error}); resuming after cursor {:?} in {:.2} s",
                    self.state.cursor,
                    delay.as_secs_f64()
                );
                self.reconnects += 1;
                self.phase = Phase::Backoff(Box::pin(tokio::time::sleep(delay)));
                None
            }
            None => {
                let error = watch_error(policy, error, self.failures);
                self.phase = Phase::Done;
                Some(error)
            }
        }
    }

    fn poll_deadline(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<IngestionEvent, Error>>> {
        let Some(deadline) = self.deadline else {
            return Poll::Pending;
        };
        // Made on the first wait, inside the runtime that polls the watch.
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        let fired = timer.as_mut().poll(cx).is_ready();
        if fired {
            self.phase = Phase::Done;
            return Poll::Ready(Some(Err(deadline_passed())));
        }
        Poll::Pending
    }
}

fn deadline_passed() -> Error {
    Error::new(Code::DeadlineExceeded, "the watch's deadline passed")
}

/// What a watch that cannot go on yields: its error, or `DeadlineExceeded` when only its
/// deadline kept it from trying again (the watch's timeout is what ended it).
fn watch_error(policy: &RetryPolicy, error: Error, failures: u32) -> Error {
    if !policy.retries(&error, failures) || error.code() == Code::DeadlineExceeded {
        return error;
    }
    let message = format!("the watch's deadline passed while it was reconnecting ({error})");
    Error::new(Code::DeadlineExceeded, message).with_source(error)
}

impl Stream for Watch {
    type Item = Result<IngestionEvent, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if !matches!(this.phase, Phase::Done)
                && this
                    .deadline
                    .is_some_and(|deadline| Instant::now() >= deadline)
            {
                this.phase = Phase::Done;
                return Poll::Ready(Some(Err(deadline_passed())));
            }
            match &mut this.phase {
                Phase::Done => return Poll::Ready(None),
                Phase::Start => {
                    let message = this.state.request();
                    match this.client.request(message, this.deadline) {
                        Ok(request) => {
                            let channel = this.client.channel().clone();
                            this.phase = Phase::Opening(Box::pin(async move {
                                IngestServiceClient::new(channel)
                                    .watch_ingestions(request)
                                    .await
                            }));
                        }
                        Err(error) => {
                            this.phase = Phase::Done;
                            return Poll::Ready(Some(Err(error)));
                        }
                    }
                }
                Phase::Opening(opening) => match opening.as_mut().poll(cx) {
                    Poll::Ready(Ok(response)) => {
                        this.phase = Phase::Open(Box::new(response.into_inner()))
                    }
                    Poll::Ready(Err(status)) => {
                        if let Some(error) = this.fail(Error::from_status(status)) {
                            return Poll::Ready(Some(Err(error)));
                        }
                    }
                    Poll::Pending => return this.poll_deadline(cx),
                },
                Phase::Open(stream) => {
                    if this.state.done() {
                        this.phase = Phase::Done;
                        continue;
                    }
                    match stream.poll_next_unpin(cx) {
                        Poll::Ready(Some(Ok(message))) => {
                            this.failures = 0;
                            if let Some(event) = this.state.accept(message) {
                                return Poll::Ready(Some(Ok(event)));
                            }
                        }
                        Poll::Ready(Some(Err(status))) => {
                            if let Some(error) = this.fail(Error::from_status(status)) {
                                return Poll::Ready(Some(Err(error)));
                            }
                        }
                        Poll::Ready(None) if this.state.done() => this.phase = Phase::Done,
                        Poll::Ready(None) => {
                            let ended =
                                Error::new(Code::Unavailable, "the watch stream ended early");
                            if let Some(error) = this.fail(ended) {
                                return Poll::Ready(Some(Err(error)));
                            }
                        }
                        Poll::Pending => return this.poll_deadline(cx),
                    }
                }
                Phase::Backoff(sleep) => match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => this.phase = Phase::Start,
                    Poll::Pending => return this.poll_deadline(cx),
                },
            }
        }
    }
}

/// [`Client::wait_for`], with its deadline.
pub(crate) async fn wait_for<S: Into<String>>(
    client: &Client,
    ingestion_ids: impl IntoIterator<Item = S>,
    deadline: Option<Instant>,
) -> Result<Vec<Ingestion>, Error> {
    let ids = distinct(ingestion_ids);
    let mut finished: HashMap<String, Ingestion> = HashMap::new();
    for group in ids.chunks(client.settings().batch_size) {
        let mut watch = Watch::new(client, group.to_vec(), String::new(), deadline);
        while let Some(event) = watch.next().await {
            match event {
                Ok(_) => {}
                Err(error) if error.code() == Code::DeadlineExceeded => {
                    finished.extend(watch.state.finished.drain());
                    return Err(timed_out(&ids, finished, error));
                }
                Err(error) => return Err(error),
            }
        }
        finished.extend(watch.state.finished.drain());
    }
    let mut ended = Vec::with_capacity(ids.len());
    for id in &ids {
        match finished.remove(id) {
            Some(ingestion) => ended.push(ingestion),
            None => {
                let message = format!("the watch of ingestion {id} ended before it did");
                return Err(Error::new(Code::Internal, message));
            }
        }
    }
    Ok(ended)
}

fn timed_out(ids: &[String], mut finished: HashMap<String, Ingestion>, cause: Error) -> Error {
    let mut ended = Vec::new();
    let mut pending = Vec::new();
    for id in ids {
        match finished.remove(id) {
            Some(ingestion) => ended.push(ingestion),
            None => pending.push(id.clone()),
        }
    }
    let message = format!(
        "{} of {} ingestions had not finished in time",
        pending.len(),
        ids.len()
    );
    Error::new(Code::DeadlineExceeded, message)
        .with_wait_timeout(WaitTimeout {
            finished: ended,
            pending,
        })
        .with_source(cause)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, state: proto::IngestionState, cursor: &str) -> proto::IngestionEvent {
        proto::IngestionEvent {
            ingestion: Some(proto::Ingestion {
                ingestion_id: id.into(),
                state: state.into(),
                ..Default::default()
            }),
            cursor: cursor.into(),
            event_time: None,
        }
    }

    #[test]
    fn an_unfiltered_watch_resumes_after_the_last_cursor() {
        let mut state = WatchState::new(Vec::new(), "5".into());
        assert_eq!(state.request().after_cursor, "5");
        assert!(state
            .accept(event("a", proto::IngestionState::Accepted, "6"))
            .is_some());
        assert_eq!(state.request().after_cursor, "6");
        assert!(!state.done());
    }

    #[test]
    fn a_snapshot_broken_part_way_starts_over_and_hands_out_nothing_twice() {
        use proto::IngestionState::{Accepted, Indexed};
        let mut state = WatchState::new(vec!["a".into(), "b".into(), "a".into()], String::new());
        let first = state.request();
        assert_eq!(first.ingestion_ids, ["a", "b"]);
        assert_eq!(first.after_cursor, "");
        assert!(state.accept(event("a", Indexed, "9")).is_some());
        // Broken before b's state: the snapshot is asked for again.
        assert_eq!(state.request().after_cursor, "");
        assert!(state.accept(event("a", Indexed, "10")).is_none());
        assert!(state.accept(event("b", Accepted, "10")).is_some());
        // The snapshot is complete: from here on, after its cursor.
        assert_eq!(state.request().after_cursor, "10");
        assert!(!state.done());
        assert!(state.accept(event("b", Indexed, "11")).is_some());
        assert!(state.done());
        assert_eq!(state.finished.len(), 2);
    }
}
