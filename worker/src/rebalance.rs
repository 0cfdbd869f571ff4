//! What the worker hears of the group's rebalances, so that it never writes or commits records
//! of a partition the group has given to another worker.
//!
//! Rebalances happen inside `recv()`. The worker calls it while it gathers a batch and while the
//! model embeds the one before, but never while it writes a batch to the store or commits it.
//! So a partition can be revoked after some of its records were received and before they are
//! written: those records are then stale (their new owner, or this worker again after a
//! re-assignment, resumes from the committed offset and reads them again), and must not be
//! written or committed here. Records received after the revocation are fresh. [`Rebalances`]
//! numbers the revocations so the worker can tell the two apart, right before each write.

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
    /// Revocations that may still make a held record stale: their number and partitions.
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

    /// Whether a record of `partition` received at revocation number `received_at` is stale.
    pub fn is_stale(&self, partition: &Partition, received_at: u64) -> bool {
        is_stale(
            partition,
            received_at,
            &self.revoked.lock().expect("revocations lock"),
        )
    }

    /// Forgets the revocations that can make no record stale any more: those up to `oldest`,
    /// the revocation number of the oldest record still held (everything, when none is).
    pub fn forget(&self, oldest: Option<u64>) {
        let mut revoked = self.revoked.lock().expect("revocations lock");
        match oldest {
            Some(oldest) => revoked.retain(|(epoch, _)| *epoch > oldest),
            None => revoked.clear(),
        }
    }
}

/// Whether a record of `partition`, received at revocation number `received_at`, is stale:
/// a later revocation took its partition.
fn is_stale(
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

    #[test]
    fn revocations_are_forgotten_once_no_held_record_predates_them() {
        let rebalances = Rebalances::default();
        rebalances
            .revoked
            .lock()
            .unwrap()
            .extend([(1, HashSet::from([p(0)])), (2, HashSet::from([p(1)]))]);
        assert!(rebalances.is_stale(&p(0), 0));
        // The oldest record held was received after revocation 1: only 2 still matters.
        rebalances.forget(Some(1));
        assert!(!rebalances.is_stale(&p(0), 0));
        assert!(rebalances.is_stale(&p(1), 1));
        // Nothing held: nothing to remember.
        rebalances.forget(None);
        assert!(!rebalances.is_stale(&p(1), 1));
    }
}
