//! The floor the load tool measures Switchboard against: a featureless WebSocket fan-out on
//! tokio-tungstenite, speaking just enough of the protocol for `switchboard-load` (a `welcome`,
//! a `reply` to each `join`, and each `publish` sent on to every member of its channel as a
//! `message` frame). No authentication, no rules, no limits, no bounded queues, no history, no
//! metrics: what is left is the cost of WebSocket framing, JSON and the sockets, which is what a
//! fan-out server cannot go below. One tokio thread, like a node pinned to one core.
//!
//! `cargo run --release --example fanout-floor [ADDRESS]` prints `listening on http://…`
//! (`benches/load.sh` starts it beside a node and reports the ratios).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

type Members = Arc<Mutex<HashMap<String, Vec<mpsc::UnboundedSender<Message>>>>>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listener = TcpListener::bind(&address).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let members: Members = Arc::default();
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(connection(stream, members.clone()));
    }
}

async fn connection(stream: TcpStream, members: Members) {
    if stream.set_nodelay(true).is_err() {
        return;
    }
    let Ok(socket) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let (mut sink, mut source) = socket.split();
    let (outbox, mut queued) = mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        // Everything waiting goes out in one write, as a node's outbound body does.
        while let Some(message) = queued.recv().await {
            if sink.feed(message).await.is_err() {
                return;
            }
            while let Ok(message) = queued.try_recv() {
                if sink.feed(message).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    let _ = outbox.send(Message::text(r#"{"type":"welcome"}"#));
    while let Some(Ok(Message::Text(text))) = source.next().await {
        let Ok(frame) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let channel = frame["channel"].as_str().unwrap_or_default().to_owned();
        match frame["action"].as_str() {
            Some("join") => {
                let mut members = members.lock().unwrap_or_else(|e| e.into_inner());
                members.entry(channel).or_default().push(outbox.clone());
                let reply = json!({"type": "reply", "id": frame["id"]}).to_string();
                let _ = outbox.send(Message::text(reply));
            }
            Some("publish") => {
                let message = Message::text(
                    json!({"type": "message", "channel": channel, "data": frame["data"]})
                        .to_string(),
                );
                let mut members = members.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(list) = members.get_mut(&channel) {
                    list.retain(|member| member.send(message.clone()).is_ok());
                }
            }
            _ => {}
        }
    }
    writer.abort();
}
