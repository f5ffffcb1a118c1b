//! A node started inside the test process with `server::run` on a listener bound here, for the
//! protocol tests where a process adds nothing (no signals, no logs, no metrics read: the
//! Prometheus recorder is one per process, shared by every in-process node).

use std::net::TcpListener;
use std::thread::JoinHandle;

use switchboard::config::Config;
use tokio::sync::oneshot;

use super::Endpoint;

/// A node on its own thread (an actix `System`), drained and stopped on drop.
pub struct InProcessServer {
    endpoint: Endpoint,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl InProcessServer {
    /// Starts a node with `config` (TOML; the bind address is a free loopback port).
    pub fn start(config: &str) -> Self {
        let config = Config::from_sources(Some(config), Vec::new()).expect("a valid config");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let shutdown = async {
                let _ = stopped.await;
            };
            actix_rt::System::new()
                .block_on(switchboard::server::run(listener, config, shutdown))
                .expect("the in-process node ran");
        });
        Self {
            endpoint: Endpoint { address },
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl std::ops::Deref for InProcessServer {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Drop for InProcessServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // The node drains (its sockets are the test's, already dropped) and stops; not waited
        // for past a moment, so a stuck node cannot hang the test binary.
        if let Some(thread) = self.thread.take() {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while !thread.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
}
