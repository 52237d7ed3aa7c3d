//! Connections relay has taken over from hyper's server (a WebSocket after its `101`, a `CONNECT`
//! tunnel, blind or intercepted), which hyper's graceful shutdown no longer sees. Each one is
//! [`Held`] while it lives: shutdown waits for all of them within `server.shutdown_timeout`
//! ([`HeldConnections::drained`]), then cuts those still open ([`HeldConnections::cut`]).

use std::sync::Arc;

use tokio::sync::watch;

/// The connections held now, and the signal that cuts them.
#[derive(Debug)]
pub struct HeldConnections {
    open: watch::Sender<usize>,
    cut: watch::Sender<bool>,
}

/// One held connection; counted until dropped.
#[derive(Debug)]
pub struct Held(Arc<HeldConnections>);

impl HeldConnections {
    pub fn new() -> Arc<HeldConnections> {
        Arc::new(HeldConnections {
            open: watch::channel(0).0,
            cut: watch::channel(false).0,
        })
    }

    /// Counts a connection until the returned guard is dropped.
    pub fn hold(self: &Arc<Self>) -> Held {
        self.open.send_modify(|n| *n += 1);
        Held(self.clone())
    }

    /// How many are open.
    pub fn open(&self) -> usize {
        *self.open.borrow()
    }

    /// Resolves when none is open.
    pub async fn drained(&self) {
        let mut rx = self.open.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Time is up: every held connection closes ([`Held::cut`] resolves).
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }
}

impl Held {
    /// Resolves when the server cuts the held connections; a connection selects on it beside its
    /// own work and closes when it fires.
    pub async fn cut(&self) {
        let mut rx = self.0.cut.subscribe();
        let _ = rx.wait_for(|cut| *cut).await;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.open.send_modify(|n| *n -= 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[tokio::test]
    async fn drained_waits_for_the_last_guard_and_cut_reaches_every_holder() {
        let held = HeldConnections::new();
        held.drained().await; // none open: at once
        let (a, b) = (held.hold(), held.hold());
        assert_eq!(held.open(), 2);
        let mut drained = Box::pin(held.drained());
        assert!(drained.as_mut().now_or_never().is_none());
        drop(a);
        assert!(drained.as_mut().now_or_never().is_none());
        let mut cut = Box::pin(b.cut());
        assert!(cut.as_mut().now_or_never().is_none());
        held.cut();
        cut.await;
        drop(b);
        drained.await;
        assert_eq!(held.open(), 0);
        // A connection taken after the cut is cut at once.
        held.hold().cut().await;
    }
}
