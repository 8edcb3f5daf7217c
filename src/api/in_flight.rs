//! The transfers streaming through this replica: each is counted in the metrics and in one
//! count whose fall to zero wakes the idle-memory task, so what the transfers freed goes
//! back to the system as soon as they end rather than at the task's next tick, before
//! whatever transfers come next allocate on top of it.

use std::sync::atomic::{AtomicI64, Ordering};

use tokio::sync::Notify;

use crate::telemetry::metrics::{self, Direction};

/// The transfers of this process.
pub static TRANSFERS: Transfers = Transfers::new();

/// A count of transfers in flight that says when the last one ends.
pub struct Transfers {
    count: AtomicI64,
    all_ended: Notify,
}

/// One transfer in flight, counted until dropped.
pub struct InFlight {
    transfers: &'static Transfers,
    _gauge: metrics::InFlightGuard,
}

impl Transfers {
    /// No transfer in flight.
    pub const fn new() -> Self {
        Self {
            count: AtomicI64::new(0),
            all_ended: Notify::const_new(),
        }
    }

    /// Counts a transfer in `direction` as in flight until the returned guard drops.
    pub fn started(&'static self, direction: Direction) -> InFlight {
        self.count.fetch_add(1, Ordering::AcqRel);
        InFlight {
            transfers: self,
            _gauge: metrics::transfer_started(direction),
        }
    }

    /// Transfers in flight now.
    pub fn count(&self) -> i64 {
        self.count.load(Ordering::Acquire)
    }

    /// Returns once the count has fallen to zero; at once if it fell since the last wait
    /// ended, so an end that comes while nobody waits is not missed.
    pub async fn all_ended(&self) {
        self.all_ended.notified().await
    }
}

impl Default for Transfers {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.transfers.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.transfers.all_ended.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn transfers() -> &'static Transfers {
        Box::leak(Box::new(Transfers::new()))
    }

    async fn ended_within(transfers: &Transfers, wait: Duration) -> bool {
        tokio::time::timeout(wait, transfers.all_ended())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn the_end_of_the_last_transfer_wakes_the_waiter_and_not_before() {
        let transfers = transfers();
        let push = transfers.started(Direction::Push);
        let pull = transfers.started(Direction::Pull);
        assert_eq!(transfers.count(), 2);

        drop(push);
        assert_eq!(transfers.count(), 1);
        assert!(
            !ended_within(transfers, Duration::from_millis(50)).await,
            "a pull is still in flight"
        );

        // Ended while nobody waits: the next wait returns at once.
        drop(pull);
        assert_eq!(transfers.count(), 0);
        assert!(ended_within(transfers, Duration::from_secs(5)).await);
        // ...and only once: nothing ended since.
        assert!(!ended_within(transfers, Duration::from_millis(50)).await);
    }
}
