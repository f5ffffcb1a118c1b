//! The writer task: owns the `actix_ws::Session` and drains the connection's bounded outbound
//! queue into it. On a close request, what is already queued (a last `error` frame, say) is
//! written first, then the close frame; for a slow consumer (4010) the queue is the problem, so
//! the close overtakes it. Either way the close is bounded by `CLOSE_WRITE_TIMEOUT`.
//!
//! actix-ws encodes every message already waiting in its channel into one buffer per poll, so
//! frames that pile up while the socket is busy leave in one write.
//!
//! The writer holds the connection's admission [`Ticket`]: a connection is over when its close
//! frame is written (or given up), which is when the writer returns, so the drain on shutdown
//! waits for exactly that.

use std::time::Duration;

use actix_ws::{CloseReason, Message, Session};
use tokio::sync::{mpsc, oneshot};

use super::admission::Ticket;
use crate::hub::Outbound;
use crate::protocol::{CloseCode, OutboundFrame};

/// How long a close frame may wait for a congested socket before the writer gives up on it and
/// the connection is dropped: long enough for a briefly paused reader to learn why it was closed,
/// short enough that a dead one does not pin its buffers.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The close frame the connection actor asks for.
#[derive(Debug, Clone)]
pub struct CloseRequest {
    pub code: CloseCode,
    pub reason: String,
}

impl From<CloseRequest> for CloseReason {
    fn from(request: CloseRequest) -> Self {
        CloseReason {
            code: request.code.code().into(),
            description: (!request.reason.is_empty()).then_some(request.reason),
        }
    }
}

/// Runs until the close request arrives (or its sender is dropped), or the socket is gone;
/// `ticket` is released when it returns.
pub async fn run(
    mut session: Session,
    mut queue: mpsc::Receiver<Outbound>,
    mut close: oneshot::Receiver<CloseRequest>,
    ticket: Ticket,
) {
    let _released_on_return = ticket;
    loop {
        tokio::select! {
            biased;
            request = &mut close => {
                let request = request.ok();
                let flush = request
                    .as_ref()
                    .is_some_and(|request| request.code != CloseCode::SlowConsumer);
                let closing = async {
                    if flush {
                        while let Ok(outbound) = queue.try_recv() {
                            if !send(&mut session, outbound).await {
                                return;
                            }
                        }
                    }
                    let _ = session.close(request.map(CloseReason::from)).await;
                };
                let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, closing).await;
                return;
            }
            sent = forward_next(&mut queue, &mut session) => {
                if !sent {
                    let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, session.close(None)).await;
                    return;
                }
            }
        }
    }
}

/// Moves one queued item to the socket; `false` when the queue or the socket is closed.
async fn forward_next(queue: &mut mpsc::Receiver<Outbound>, session: &mut Session) -> bool {
    match queue.recv().await {
        Some(outbound) => send(session, outbound).await,
        None => false,
    }
}

/// Writes one item; `false` when the socket is closed.
async fn send(session: &mut Session, outbound: Outbound) -> bool {
    let message = match outbound {
        Outbound::Frame(OutboundFrame::Text(text)) => Message::Text(text),
        Outbound::Frame(OutboundFrame::Binary(bytes)) => Message::Binary(bytes),
        Outbound::Ping(bytes) => Message::Ping(bytes),
        Outbound::Pong(bytes) => Message::Pong(bytes),
    };
    futures_util::SinkExt::send(session, message).await.is_ok()
}
