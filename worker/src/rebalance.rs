//! What the worker hears of the group's rebalances, so that it never commits a partition the
//! group has given to another worker.
//!
//! Rebalances happen inside `recv()`, and the worker calls it only between batches and while it
//! gathers one. A batch being processed is therefore always finished (committed or aborted)
//! before its partitions can move. But a partition can be revoked while a batch is gathered:
//! the records of it received before the revocation are then stale (their new owner, or this
//! worker again after a re-assignment, resumes from the committed offset and reads them
//! again), and must not be processed or committed here. Records received after it are fresh.
//! [`Rebalances`] numbers the revocations so the batch can tell the two apart.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::ClientContext;

/// A partition: topic and number.
pub type Partition = (String, i32);

/// The consumer's context: counts revocations and keeps what each one took.
#[derive(Default)]
pub struct Rebalances {
    /// The number of the latest revocation.
    epoch: AtomicU64,
    /// Revocations not yet looked at: their number and partitions.
    revoked: Mutex<Vec<(u64, HashSet<Partition>)>>,
}

impl ClientContext for Rebalances {}

impl ConsumerContext for Rebalances {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let partitions: HashSet<Partition> = list
                .elements()
                .iter()
                .map(|p| (p.topic().to_owned(), p.partition()))
                .collect();
            tracing::info!(partitions = ?partitions, "partitions revoked");
            let mut revoked = self.revoked.lock().expect("revocations lock");
            let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
            revoked.push((epoch, partitions));
        }
    }
}

impl Rebalances {
    /// The number of the latest revocation: a record received now is fresh for every
    /// revocation up to it.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Takes the revocations seen so far (the next batch starts with none).
    pub fn take(&self) -> Vec<(u64, HashSet<Partition>)> {
        std::mem::take(&mut *self.revoked.lock().expect("revocations lock"))
    }
}

/// Whether a record of `partition`, received at revocation number `received_at`, is stale:
/// a later revocation took its partition.
pub fn is_stale(
    partition: &Partition,
    received_at: u64,
    revocations: &[(u64, HashSet<Partition>)],
) -> bool {
    revocations
        .iter()
        .any(|(epoch, partitions)| *epoch > received_at && partitions.contains(partition))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i32) -> Partition {
        ("sluice.documents".to_owned(), n)
    }

    #[test]
    fn records_received_before_their_partition_was_revoked_are_stale() {
        let revocations = vec![(3, HashSet::from([p(0), p(1)])), (4, HashSet::from([p(2)]))];
        // Received before revocation 3 took partition 0.
        assert!(is_stale(&p(0), 2, &revocations));
        // Received after it (the partition was given back, or a fresh fetch): fresh.
        assert!(!is_stale(&p(0), 3, &revocations));
        // Partition 2 went at 4.
        assert!(is_stale(&p(2), 3, &revocations));
        assert!(!is_stale(&p(2), 4, &revocations));
        // Never revoked.
        assert!(!is_stale(&p(5), 0, &revocations));
        assert!(!is_stale(&p(0), 0, &[]));
    }
}
