//! How reconcilers (DNS answers, NAT rules, flow tables) follow the replicated
//! state: a watch of the latest applied state. Reconcilers are level-triggered:
//! on each change they recompute what should be from the whole state and make
//! their world match, so they never need the individual changes and a missed
//! intermediate state loses nothing.

use std::sync::Arc;

use tokio::sync::watch;

use crate::core::state::ClusterState;

/// The appliance's side: publishes every newly applied state.
#[derive(Debug)]
pub struct StateFeed {
    tx: watch::Sender<Arc<ClusterState>>,
}

/// A reconciler's side.
#[derive(Debug, Clone)]
pub struct StateWatch {
    rx: watch::Receiver<Arc<ClusterState>>,
}

impl StateFeed {
    pub fn new(initial: &ClusterState) -> StateFeed {
        StateFeed {
            tx: watch::channel(Arc::new(initial.clone())).0,
        }
    }

    /// Publishes `state` if it is newer than what watchers have.
    pub fn publish(&self, state: &ClusterState) {
        self.tx.send_if_modified(|cur| {
            if state.applied > cur.applied {
                *cur = Arc::new(state.clone());
                true
            } else {
                false
            }
        });
    }

    pub fn subscribe(&self) -> StateWatch {
        StateWatch {
            rx: self.tx.subscribe(),
        }
    }
}

impl StateWatch {
    /// The latest applied state.
    pub fn current(&self) -> Arc<ClusterState> {
        self.rx.borrow().clone()
    }

    /// Waits for a state newer than the last one seen; `None` once the
    /// appliance has stopped publishing.
    pub async fn changed(&mut self) -> Option<Arc<ClusterState>> {
        self.rx.changed().await.ok()?;
        Some(self.rx.borrow_and_update().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::state::{Command, Proposal, Site};

    fn site(id: &str) -> Proposal {
        Proposal {
            by: 1,
            at_unix_ms: 0,
            command: Command::PutSite(Site {
                id: id.into(),
                location: None,
                witness: false,
            }),
            request: None,
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_reconciler_sees_the_latest_state_and_skips_nothing_it_needs() {
        let mut state = ClusterState::default();
        let feed = StateFeed::new(&state);
        let mut w = feed.subscribe();
        state.apply(1, &site("a"));
        feed.publish(&state);
        state.apply(2, &site("b"));
        feed.publish(&state);
        // Two changes while the reconciler was busy: it wakes once, to the newest.
        let s = w.changed().await.unwrap();
        assert_eq!(s.applied, 2);
        assert!(s.sites.contains_key("a") && s.sites.contains_key("b"));
        // Republishing an older or equal state wakes nobody.
        feed.publish(&state);
        let pending = tokio::time::timeout(std::time::Duration::from_millis(20), w.changed()).await;
        assert!(pending.is_err(), "woken without a newer state");
        drop(feed);
        assert!(
            w.changed().await.is_none(),
            "a stopped feed must end the watch"
        );
    }
}
