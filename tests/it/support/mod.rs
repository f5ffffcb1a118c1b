//! The integration-test harness: a real `switchboard` process on a free loopback port (or a
//! server started in this process with `server::run`, where a process adds nothing), real
//! WebSocket clients, real HTTP. Every wait is bounded.
//!
//! - [`redis`]: real `redis-server` processes (standalone, password, TLS, Sentinel, Cluster) and
//!   a back end's client of Redis;
//! - [`credentials`]: signing keys made with `openssl`, tokens, JWKS, gateway headers;
//! - [`backend`]: real HTTP back ends playing Django (the introspection view, the route views);
//! - [`in_process`]: a node inside the test process.

pub mod backend;
pub mod credentials;
pub mod idp;
pub mod in_process;
pub mod redis;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(10);

static NEXT_FILE: AtomicU64 = AtomicU64::new(0);

/// Writes `contents` to a fresh file under the temp directory and returns its path.
pub fn temp_file(name: &str, contents: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "switchboard-it-{}-{}-{name}",
        std::process::id(),
        NEXT_FILE.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, contents).expect("write temp file");
    path
}

/// Runs `command` with `sh` in the repository (the guides' commands, as a reader would);
/// asserts it succeeded and returns its standard output.
pub async fn shell(command: &str) -> String {
    let output = tokio::process::Command::new("sh")
        .args(["-c", command])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    // Starting Python is slow on a loaded machine; what is tested is the command.
    let output = tokio::time::timeout(WAIT * 3, output)
        .await
        .expect("command finished")
        .expect("sh runs (make test installs redis-tools and the Python packages)");
    assert!(
        output.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_switchboard")
}

/// Where a node answers, and the clients and HTTP calls every test makes of it.
pub struct Endpoint {
    pub address: SocketAddr,
}

impl Endpoint {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{path_and_query}", self.address)
    }

    /// A JSON client on `/ws`, past its `welcome` frame.
    pub async fn client(&self) -> Client {
        self.client_in(&[]).await
    }

    /// A JSON client that joined `channels` at the handshake, past its `welcome` frame (which
    /// must list them all).
    pub async fn client_in(&self, channels: &[&str]) -> Client {
        let query: Vec<String> = channels
            .iter()
            .map(|channel| format!("channel={channel}"))
            .collect();
        let mut client = Client::connect(&self.ws_url(&format!("/ws?{}", query.join("&"))), &[])
            .await
            .expect("connect");
        let welcome = client.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        assert_eq!(
            welcome["channels"],
            serde_json::json!(channels),
            "{welcome}"
        );
        client
    }

    /// A JSON client past its `welcome`, and the connection id the welcome gave it.
    pub async fn identified_client(&self) -> (Client, String) {
        let mut client = Client::connect(&self.ws_url("/ws"), &[])
            .await
            .expect("connect");
        let welcome = client.recv().await;
        let id = welcome["connection_id"].as_str().expect("connection_id");
        (client, id.to_owned())
    }

    /// The status of `GET /readyz`.
    pub async fn readiness(&self) -> u16 {
        self.get("/readyz").await.0
    }

    /// Waits until `GET /readyz` answers `status`.
    pub async fn wait_for_readiness(&self, status: u16) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.readiness().await != status {
            assert!(
                tokio::time::Instant::now() < deadline,
                "/readyz never answered {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(self.url(path)).await.expect("GET");
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.1
    }

    /// The value of one series (`name{labels}` exactly as rendered, or a bare name).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        metric_value(&self.metrics().await, series)
    }

    /// Waits until `series` equals `expected`.
    pub async fn wait_for_metric(&self, series: &str, expected: f64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let value = self.metric(series).await;
            if value == Some(expected) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{series} is {value:?}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A running server process, killed on drop.
pub struct TestServer {
    pub child: Child,
    endpoint: Endpoint,
    config_path: PathBuf,
    /// Where standard error goes when the test reads the log.
    log_path: Option<PathBuf>,
}

impl TestServer {
    /// Starts a node with `config` (TOML) bound to a free port on 127.0.0.1.
    pub async fn start(config: &str) -> Self {
        Self::start_with_env(config, &[]).await
    }

    pub async fn start_with_env(config: &str, env: &[(&str, &str)]) -> Self {
        Self::spawn(config, env, None).await
    }

    /// Like `start`, with the node's log (standard error, at `info`) kept for [`Self::log`].
    pub async fn start_logged(config: &str) -> Self {
        Self::start_logged_at(config, "info").await
    }

    /// Like `start_logged`, at log level (`RUST_LOG`) `level`.
    pub async fn start_logged_at(config: &str, level: &str) -> Self {
        let log_path = temp_file("server.log", "");
        Self::spawn(config, &[("RUST_LOG", level)], Some(log_path)).await
    }

    /// What the node has logged so far (only for `start_logged`).
    pub fn log(&self) -> String {
        let path = self.log_path.as_ref().expect("started with start_logged");
        std::fs::read_to_string(path).expect("read log")
    }

    /// Waits until the log (of a `start_logged` node) contains `text`.
    pub async fn wait_for_log(&self, text: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.log().contains(text) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{text:?} never logged:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn spawn(config: &str, env: &[(&str, &str)], log_path: Option<PathBuf>) -> Self {
        let config_path = temp_file("config.toml", config);
        let mut command = Command::new(binary());
        command
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env("SWITCHBOARD_SERVER__BIND", "127.0.0.1:0")
            .env(
                "RUST_LOG",
                std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(match &log_path {
                Some(path) => Stdio::from(std::fs::File::create(path).expect("log file")),
                None => Stdio::inherit(),
            })
            .kill_on_drop(true);
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("spawn switchboard");
        let address = listening_address(&mut child).await;
        Self {
            child,
            endpoint: Endpoint { address },
            config_path,
            log_path,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Sends SIGTERM (what `docker stop`, systemd and Kubernetes send): the node drains.
    pub fn terminate(&self) {
        send_sigterm(self.pid());
    }

    /// How many file descriptors the server process holds.
    pub fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("read /proc fd")
            .count()
    }

    /// Waits until the server holds at most `limit` file descriptors.
    pub async fn wait_for_open_files_at_most(&self, limit: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let open = self.open_files();
            if open <= limit {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server still holds {open} descriptors, expected at most {limit}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Resident memory of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}

impl std::ops::Deref for TestServer {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config_path);
        if let Some(path) = &self.log_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Sends SIGTERM to `pid` (with the `kill` command: the crate forbids unsafe code).
pub fn send_sigterm(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -TERM {pid}");
}

/// Waits for a `serve` child's "switchboard listening on http://ADDR" line and returns ADDR.
/// The rest of its standard output is drained in the background so it never blocks on a pipe.
pub async fn listening_address(child: &mut Child) -> SocketAddr {
    let stdout = child.stdout.take().expect("stdout must be piped");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("server did not start in time")
        .expect("read stdout")
        .expect("server exited before listening");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    line.rsplit("http://")
        .next()
        .and_then(|address| address.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
}

pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
}

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client speaking JSON or MessagePack.
pub struct Client {
    pub socket: Socket,
    pub msgpack: bool,
    /// Frames read while waiting for a reply, handed out by later `recv` calls in order.
    unread: std::collections::VecDeque<Value>,
}

/// What the server answered instead of upgrading.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: Value,
}

impl Client {
    /// Connects with extra headers; `Err` carries a refused handshake's status and JSON body.
    pub async fn connect(url: &str, headers: &[(&str, &str)]) -> Result<Client, Refused> {
        let mut request = url.into_client_request().expect("request");
        let mut msgpack = false;
        for (name, value) in headers {
            if value.contains("msgpack") {
                msgpack = true;
            }
            request.headers_mut().append(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
                    .expect("header name"),
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .expect("handshake timed out")
        {
            Ok((socket, _)) => Ok(Client {
                socket,
                msgpack,
                unread: std::collections::VecDeque::new(),
            }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                let body = response
                    .body()
                    .as_ref()
                    .and_then(|body| serde_json::from_slice(body).ok())
                    .unwrap_or(Value::Null);
                Err(Refused { status, body })
            }
            Err(err) => panic!("connect failed: {err}"),
        }
    }

    pub async fn send(&mut self, frame: Value) {
        let message = if self.msgpack {
            Message::Binary(rmp_serde::to_vec_named(&frame).expect("pack").into())
        } else {
            Message::Text(frame.to_string().into())
        };
        self.socket.send(message).await.expect("send");
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.socket.send(message).await.expect("send raw");
    }

    /// The next data frame, decoded; panics on close or timeout. Pings are answered by
    /// tungstenite and skipped here.
    pub async fn recv(&mut self) -> Value {
        if let Some(frame) = self.unread.pop_front() {
            return frame;
        }
        self.recv_from_socket().await
    }

    /// The frames a `request` read before its answer and nobody has taken yet, in order.
    pub fn take_unread(&mut self) -> Vec<Value> {
        self.unread.drain(..).collect()
    }

    /// The next data frame if one arrives within `limit`.
    pub async fn recv_within(&mut self, limit: Duration) -> Option<Value> {
        if let Some(frame) = self.unread.pop_front() {
            return Some(frame);
        }
        tokio::time::timeout(limit, self.recv_from_socket())
            .await
            .ok()
    }

    async fn recv_from_socket(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("socket ended")
                .expect("socket error");
            match message {
                Message::Text(text) => {
                    assert!(!self.msgpack, "JSON text frame on a MessagePack connection");
                    return serde_json::from_str(&text).expect("server sent invalid JSON");
                }
                Message::Binary(bytes) => {
                    assert!(self.msgpack, "binary frame on a JSON connection");
                    return rmp_serde::from_slice(&bytes).expect("server sent invalid MessagePack");
                }
                Message::Close(frame) => panic!("unexpected close: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// Sends `frame` with `id` and returns the frame answering that id; frames that arrive
    /// before it are kept for later `recv` calls.
    pub async fn request(&mut self, mut frame: Value, id: u64) -> Value {
        frame["id"] = id.into();
        self.send(frame).await;
        loop {
            let answer = self.recv_from_socket().await;
            if answer["id"] == id && answer["type"] != "message" {
                return answer;
            }
            self.unread.push_back(answer);
        }
    }

    /// Reads until the server's close frame; returns its code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            let message = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("timed out waiting for close");
            match message {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (u16::from(frame.code), frame.reason.to_string());
                }
                Some(Ok(Message::Close(None))) => return (1005, String::new()),
                Some(Ok(_)) => continue,
                Some(Err(err)) => panic!("socket error before close frame: {err}"),
                None => panic!("socket ended without a close frame"),
            }
        }
    }
}

/// A WebSocket client that completes the handshake by hand and then neither reads nor answers
/// anything: the "silent" peer. Its bytes are parsed only when the test asks.
pub struct SilentSocket {
    stream: TcpStream,
}

impl SilentSocket {
    pub async fn connect(address: SocketAddr, path: &str) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = TcpStream::connect(address).await.expect("tcp connect");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write handshake");
        // Read the response head byte by byte so no frame bytes are consumed.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(WAIT, stream.read(&mut byte))
                .await
                .expect("handshake response")
                .expect("read");
            assert_eq!(read, 1, "connection closed during handshake");
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        Self { stream }
    }

    /// Writes one client frame (masked, as clients must) with the given opcode and FIN bit.
    pub async fn send_frame(&mut self, opcode: u8, fin: bool, payload: &[u8]) {
        let frame = switchboard::protocol::websocket::client_frame(
            fin,
            opcode,
            payload,
            [0x11, 0x22, 0x33, 0x44],
        );
        self.send_raw(&frame).await;
    }

    /// Writes raw bytes (a hand-made frame header, say).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.expect("write bytes");
    }

    /// Shuts the connection at once, without a close frame: what a client that sent its last
    /// frame and exited does.
    pub async fn hang_up(mut self) {
        use tokio::io::AsyncWriteExt;
        let _ = self.stream.shutdown().await;
    }

    /// Reads every frame until the server's close frame; returns its code and reason.
    pub async fn close_frame(mut self) -> (u16, String) {
        use tokio::io::AsyncReadExt;
        let mut bytes = Vec::new();
        let _ = tokio::time::timeout(WAIT, self.stream.read_to_end(&mut bytes)).await;
        let mut at = 0;
        while at + 2 <= bytes.len() {
            let opcode = bytes[at] & 0x0f;
            let mut length = usize::from(bytes[at + 1] & 0x7f);
            at += 2;
            if length == 126 {
                length = usize::from(u16::from_be_bytes([bytes[at], bytes[at + 1]]));
                at += 2;
            } else if length == 127 {
                let mut wide = [0u8; 8];
                wide.copy_from_slice(&bytes[at..at + 8]);
                length = usize::try_from(u64::from_be_bytes(wide)).expect("length");
                at += 8;
            }
            let payload = &bytes[at..(at + length).min(bytes.len())];
            if opcode == 0x8 {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                return (code, String::from_utf8_lossy(&payload[2..]).into_owned());
            }
            at += length;
        }
        panic!("no close frame in {} bytes", bytes.len());
    }
}
