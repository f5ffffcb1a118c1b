//! A real HTTPS identity provider for the JWKS tests: a TLS listener on a free loopback port with
//! a certificate from a CA made in the test (its PEM file is `ca_file`), answering `GET`s of
//! documents the test puts at paths (a JWKS, an OpenID discovery document) with a chosen
//! `Cache-Control`. It can be made to fail (500), to hang (answer after a delay), or to drop
//! connections, and it counts the requests to each path.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::support::temp_file;

/// How the provider answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Up,
    /// 500 to everything.
    Failing,
    /// Answers after this long.
    Slow(Duration),
}

#[derive(Default)]
struct State {
    documents: HashMap<String, (String, Option<String>)>,
    requests: HashMap<String, usize>,
    mode: Option<Mode>,
}

pub struct IdentityProvider {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    pub ca_file: PathBuf,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl IdentityProvider {
    pub async fn start() -> Self {
        let tls = crate::support::credentials::loopback_tls("switchboard test IdP CA");
        let ca_file = temp_file("idp-ca.pem", &tls.ca_pem);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(tls.certificate_der)],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(tls.key_der)),
            )
            .expect("TLS config");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, state) = (acceptor.clone(), shared.clone());
                tokio::spawn(async move {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        answer(stream, state).await;
                    }
                });
            }
        });
        Self {
            url: format!("https://{address}"),
            ca_file,
            state,
            task,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("provider state")
    }

    /// Serves `document` at `path` with this `Cache-Control` (none if `None`).
    pub fn serve(&self, path: &str, document: &Value, cache_control: Option<&str>) {
        self.state().documents.insert(
            path.to_owned(),
            (document.to_string(), cache_control.map(str::to_owned)),
        );
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state().mode = Some(mode);
    }

    /// Requests made to `path` so far.
    pub fn requests(&self, path: &str) -> usize {
        self.state().requests.get(path).copied().unwrap_or(0)
    }
}

impl Drop for IdentityProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    state: Arc<Mutex<State>>,
) {
    let mut request = Vec::new();
    let mut buffer = [0u8; 4096];
    while !request.windows(4).any(|window| window == b"\r\n\r\n") && request.len() < 65_536 {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => request.extend_from_slice(&buffer[..read]),
        }
    }
    let head = String::from_utf8_lossy(&request);
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let (document, mode) = {
        let mut state = state.lock().expect("provider state");
        *state.requests.entry(path.clone()).or_default() += 1;
        (
            state.documents.get(&path).cloned(),
            state.mode.unwrap_or(Mode::Up),
        )
    };
    let response = match (mode, document) {
        (Mode::Failing, _) => {
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                .to_owned()
        }
        (_, None) => {
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
        }
        (mode, Some((body, cache_control))) => {
            if let Mode::Slow(delay) = mode {
                tokio::time::sleep(delay).await;
            }
            let cache = cache_control
                .map(|value| format!("Cache-Control: {value}\r\n"))
                .unwrap_or_default();
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{cache}Connection: close\r\n\r\n{body}",
                body.len()
            )
        }
    };
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}
