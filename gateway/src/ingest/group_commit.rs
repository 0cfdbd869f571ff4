//! Group commit, written once: requests that arrive while a commit is in flight are committed
//! together in the next one, and each caller hears its own part of the answer, only after the
//! commit. The Kafka [appender], the database [recorder] and the idempotency [claims] use it:
//! a commit costs a round trip, a lock turn or a wait for the disk, so sharing one keeps that
//! cost off each request's latency.
//!
//! Each request's items stay together in one commit (all-or-nothing): a group takes whole
//! requests up to `max_items`, and a single request larger than that goes alone. When a group
//! fails because of what one request holds ([`Commit::retry_alone`]: Kafka refusing a record),
//! each of its requests is committed again on its own, so only that request fails.
//!
//! [appender]: crate::ingest::appender
//! [recorder]: crate::ingest::recorder
//! [claims]: crate::ingest::idempotency

use std::future::Future;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// What commits a group. One committer runs at a time, in its own task.
pub trait Commit: Send + 'static {
    type Item: Send + 'static;
    type Output: Send + 'static;
    /// Cloned to every request of a group that failed.
    type Error: Clone + Send + 'static;

    /// Commits `items` as one unit; on success, one output per item, in order.
    fn commit(
        &mut self,
        items: &[Self::Item],
    ) -> impl Future<Output = Result<Vec<Self::Output>, Self::Error>> + Send;

    /// Whether a group that failed with `error` may have failed for one request's items only,
    /// so that its requests are worth committing one by one.
    fn retry_alone(_error: &Self::Error) -> bool {
        false
    }
}

/// The group-commit task has stopped (every handle was dropped, or it is shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped;

type Answer<C> = Result<Vec<<C as Commit>::Output>, <C as Commit>::Error>;

struct Request<C: Commit> {
    items: Vec<C::Item>,
    reply: oneshot::Sender<Answer<C>>,
}

/// The handle requests use; cheap to clone. When every handle is dropped the task finishes
/// the commit in flight and stops.
pub struct GroupCommit<C: Commit> {
    requests: mpsc::Sender<Request<C>>,
}

impl<C: Commit> Clone for GroupCommit<C> {
    fn clone(&self) -> Self {
        Self {
            requests: self.requests.clone(),
        }
    }
}

impl<C: Commit> GroupCommit<C> {
    /// Starts the task; `name` is for its logs.
    pub fn spawn(name: &'static str, committer: C, max_items: usize) -> (Self, JoinHandle<()>) {
        let (requests, receiver) = mpsc::channel(1024);
        let task = tokio::spawn(run(name, committer, receiver, max_items.max(1)));
        (Self { requests }, task)
    }

    /// Commits `items` (possibly with other requests' items) and returns their outputs.
    pub async fn submit(&self, items: Vec<C::Item>) -> Result<Answer<C>, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request { items, reply })
            .await
            .map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }
}

async fn run<C: Commit>(
    name: &'static str,
    mut committer: C,
    mut requests: mpsc::Receiver<Request<C>>,
    max_items: usize,
) {
    let mut next = requests.recv().await;
    while let Some(first) = next.take() {
        // Everything already waiting joins this commit, up to the limit; the request that
        // does not fit starts the next group.
        let mut count = first.items.len();
        let mut group = vec![first];
        while count < max_items {
            match requests.try_recv() {
                Ok(request) if count + request.items.len() <= max_items => {
                    count += request.items.len();
                    group.push(request);
                }
                Ok(request) => {
                    next = Some(request);
                    break;
                }
                Err(_) => break,
            }
        }
        commit_group(name, &mut committer, group).await;
        if next.is_none() {
            next = requests.recv().await;
        }
    }
    tracing::info!("{name} stopped");
}

/// Commits one group and answers each of its requests.
async fn commit_group<C: Commit>(name: &'static str, committer: &mut C, group: Vec<Request<C>>) {
    metrics::histogram!("sluice_gateway_group_commit_requests_per_batch", "group" => name)
        .record(group.len() as f64);
    let mut sizes = Vec::with_capacity(group.len());
    let mut replies = Vec::with_capacity(group.len());
    let mut items = Vec::new();
    for request in group {
        sizes.push(request.items.len());
        replies.push(request.reply);
        items.extend(request.items);
    }
    match committer.commit(&items).await {
        Ok(outputs) => {
            let mut outputs = outputs.into_iter();
            for (size, reply) in sizes.into_iter().zip(replies) {
                let _ = reply.send(Ok(outputs.by_ref().take(size).collect()));
            }
        }
        // One request's items may be what failed the group: each request on its own, so
        // that only that one hears the error.
        Err(error) if replies.len() > 1 && C::retry_alone(&error) => {
            let mut start = 0;
            for (size, reply) in sizes.into_iter().zip(replies) {
                let answer = committer.commit(&items[start..start + size]).await;
                start += size;
                let _ = reply.send(answer);
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Doubles numbers, remembering each group; fails groups that contain a zero (and says
    /// to retry them alone when asked to).
    struct Doubler {
        groups: Arc<Mutex<Vec<Vec<u32>>>>,
    }

    impl Commit for Doubler {
        type Item = u32;
        type Output = u32;
        type Error = String;

        async fn commit(&mut self, items: &[u32]) -> Result<Vec<u32>, String> {
            // Slow enough that requests pile up behind the first.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            self.groups.lock().unwrap().push(items.to_vec());
            if items.contains(&0) {
                return Err("zero".into());
            }
            Ok(items.iter().map(|n| n * 2).collect())
        }

        fn retry_alone(error: &String) -> bool {
            error == "zero"
        }
    }

    #[tokio::test]
    async fn a_refused_request_fails_alone_not_its_group() {
        let groups = Arc::new(Mutex::new(Vec::new()));
        let (commits, task) = GroupCommit::spawn(
            "doubler",
            Doubler {
                groups: groups.clone(),
            },
            100,
        );
        // Thirty requests at once, one of them refused: they share groups, and only the
        // refused one fails.
        let calls = (0..30u32).map(|n| {
            let commits = commits.clone();
            async move { commits.submit(vec![n, n + 100]).await }
        });
        let answers = futures::future::join_all(calls).await;
        assert_eq!(answers[0], Ok(Err("zero".to_string())));
        for (n, answer) in (1..30u32).zip(&answers[1..]) {
            assert_eq!(answer, &Ok(Ok(vec![2 * n, 2 * (n + 100)])));
        }
        drop(commits);
        task.await.unwrap();
        let groups = groups.lock().unwrap();
        assert!(
            groups.iter().any(|g| g.len() > 2 && g.contains(&0)),
            "the refused request never shared a group: {groups:?}"
        );
    }

    #[tokio::test]
    async fn requests_share_commits_and_each_hears_its_own_answer() {
        let groups = Arc::new(Mutex::new(Vec::new()));
        let (commits, task) = GroupCommit::spawn(
            "doubler",
            Doubler {
                groups: groups.clone(),
            },
            5,
        );
        let calls = (1..=20u32).map(|n| {
            let commits = commits.clone();
            async move { commits.submit(vec![n, n + 100]).await }
        });
        let answers = futures::future::join_all(calls).await;
        for (n, answer) in (1..=20u32).zip(answers) {
            assert_eq!(answer, Ok(Ok(vec![2 * n, 2 * (n + 100)])));
        }
        // A request larger than the limit goes alone, whole; a failed group fails each of
        // its requests and nothing else.
        let large: Vec<u32> = (1..=7).collect();
        assert_eq!(
            commits.submit(large.clone()).await.unwrap().unwrap().len(),
            7
        );
        assert_eq!(commits.submit(vec![0]).await, Ok(Err("zero".to_string())));
        assert_eq!(commits.submit(vec![3]).await, Ok(Ok(vec![6])));
        drop(commits);
        task.await.unwrap();

        let groups = groups.lock().unwrap();
        let (pairs, last) = groups.split_at(groups.len() - 3);
        assert_eq!(last, [large, vec![0], vec![3]]);
        assert!(pairs.len() < 20, "requests shared commits: {pairs:?}");
        for group in pairs {
            assert!(group.len() <= 5, "{group:?}");
            // Requests stay whole: n and n + 100 always in the same group.
            for n in group.iter().filter(|n| **n < 100) {
                assert!(group.contains(&(n + 100)), "{group:?}");
            }
        }
    }
}
