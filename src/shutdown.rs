//! Graceful shutdown as a broadcast: `Trigger::fire` tells every holder of
//! a `Shutdown` to stop taking new work. Each service races its work against
//! `Shutdown::wait`.

use tokio::sync::watch;

/// Fires the shutdown for every `Shutdown` made from it.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// A handle that resolves once shutdown is fired.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A connected trigger and handle.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Tells every `Shutdown` to stop.
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }

    /// Another handle on this trigger.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

impl Shutdown {
    /// Resolves when shutdown has been fired (or the trigger dropped).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|&v| v).await;
    }

    /// Whether shutdown has already been fired.
    pub fn is_fired(&self) -> bool {
        *self.0.borrow()
    }
}
