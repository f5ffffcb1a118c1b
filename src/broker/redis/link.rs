//! Whether one fred client's connection is usable right now, judged from the client's events.
//!
//! fred keeps reporting `Connected` for a while after its socket died (until the router's
//! backoff ends), and commands handed to it in that window wait in its queue and are sent after
//! the reconnect, long after their caller gave up. A node must not answer `backend_unavailable`
//! for a publication that then goes out anyway, so nothing is handed to fred unless its [`Link`]
//! is up: down from the first connection error, up again at the next (re)connection.

use std::sync::atomic::{AtomicBool, Ordering};

use fred::interfaces::{ClientLike, EventInterface};
use tokio::sync::broadcast::error::RecvError;

use crate::metrics as names;

pub(crate) struct Link {
    /// `publisher` or `subscriber`, for logs and the reconnect metric.
    name: &'static str,
    up: AtomicBool,
}

impl Link {
    pub(crate) fn new(name: &'static str) -> Self {
        Self {
            name,
            up: AtomicBool::new(false),
        }
    }

    /// Whether commands may be handed to `client` now.
    pub(crate) fn is_up(&self, client: &impl ClientLike) -> bool {
        self.up.load(Ordering::SeqCst) && client.is_connected()
    }

    /// Follows `client`'s connection events until the client is closed.
    pub(super) async fn watch<C: EventInterface>(&self, client: C) {
        let mut errors = client.error_rx();
        let mut connections = client.reconnect_rx();
        let mut connected_before = false;
        // One warning per outage: the first error after a connection (or at start), not one per
        // reconnect attempt.
        let mut warned = false;
        loop {
            tokio::select! {
                error = errors.recv() => match error {
                    Ok((error, _server)) => {
                        let was_up = self.up.swap(false, Ordering::SeqCst);
                        if !warned {
                            warned = true;
                            let what = if was_up { "redis connection lost" } else { "cannot connect to redis" };
                            tracing::warn!(client = self.name, %error, "{what}; retrying with backoff");
                        }
                    }
                    Err(RecvError::Lagged(_)) => self.up.store(false, Ordering::SeqCst),
                    Err(RecvError::Closed) => return,
                },
                connection = connections.recv() => match connection {
                    Ok(_) | Err(RecvError::Lagged(_)) => {
                        self.up.store(true, Ordering::SeqCst);
                        warned = false;
                        if connected_before {
                            metrics::counter!(names::BROKER_RECONNECTS, "client" => self.name)
                                .increment(1);
                            tracing::info!(client = self.name, "redis reconnected");
                        } else {
                            tracing::info!(client = self.name, "redis connected");
                        }
                        connected_before = true;
                    }
                    Err(RecvError::Closed) => return,
                },
            }
        }
    }
}
