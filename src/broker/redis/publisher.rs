//! The node's publishing path to Redis: one task, one bounded queue, in order.
//!
//! `RedisBroker::publish` puts each publication into the queue synchronously, in the caller's
//! order. The task takes whatever has accumulated (up to [`MAX_BATCH`]) and sends it as one
//! pipeline, so many publications cost one write and one round trip, and their order on the
//! connection is the order of the queue: one publisher's messages to one channel reach every
//! node in order. One pipeline is in flight at a time; the next batch accumulates meanwhile.
//!
//! Nothing waits for Redis to come back: while the client is disconnected, and for commands that
//! find it disconnected (`fail_fast`), every publication fails at once with
//! [`BrokerError::Unavailable`], which the publisher hears as `backend_unavailable`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::clients::{Client, Pipeline};
use fred::interfaces::{ClientLike, PubsubInterface};
use fred::types::Value as RedisValue;
use fred::types::config::Options;
use tokio::sync::{mpsc, oneshot};

use super::names::RedisChannel;
use super::{Shared, not_connected};
use crate::broker::BrokerError;
use crate::metrics as names;

/// Publications waiting for the pipeline before `publish` refuses more.
pub(super) const QUEUE_CAPACITY: usize = 16_384;
/// Publications per pipeline.
const MAX_BATCH: usize = 512;
/// How long a pipeline may take before its publications count as failed.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(3);

/// One publication waiting to be sent.
pub(super) struct Outgoing {
    pub(super) channel: RedisChannel,
    pub(super) payload: Bytes,
    /// Told the outcome; `None` for fire-and-forget (the readiness probe).
    pub(super) reply: Option<oneshot::Sender<Result<(), BrokerError>>>,
}

/// Sends what arrives on `queue` until every sender is gone.
pub(super) async fn run(shared: Arc<Shared>, mut queue: mpsc::Receiver<Outgoing>) {
    let client = &shared.publisher;
    let options = Options {
        timeout: Some(PUBLISH_TIMEOUT),
        fail_fast: true,
        max_attempts: Some(1),
        ..Options::default()
    };
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let results = if shared.can_publish() {
            send(client, &options, &batch).await
        } else {
            vec![Err(not_connected()); batch.len()]
        };
        let failed = results.iter().filter(|result| result.is_err()).count();
        metrics::counter!(names::BROKER_PUBLISHED).increment((batch.len() - failed) as u64);
        if failed > 0 {
            metrics::counter!(names::BROKER_PUBLISH_FAILURES).increment(failed as u64);
        }
        for (outgoing, result) in batch.drain(..).zip(results) {
            if let Some(reply) = outgoing.reply {
                let _ = reply.send(result);
            }
        }
    }
}

/// Sends one batch as a pipeline; one result per publication, in order.
async fn send(
    client: &Client,
    options: &Options,
    batch: &[Outgoing],
) -> Vec<Result<(), BrokerError>> {
    let pipeline = Pipeline::from(client.with_options(options));
    for outgoing in batch {
        let name = outgoing.channel.name.as_str();
        let payload = RedisValue::Bytes(outgoing.payload.clone());
        // Queuing into a pipeline only buffers the command; it cannot fail on the network.
        let queued: Result<RedisValue, _> = if outgoing.channel.sharded {
            pipeline.spublish(name, payload).await
        } else {
            pipeline.publish(name, payload).await
        };
        if let Err(err) = queued {
            tracing::warn!(error = %err, "cannot queue a publication");
        }
    }
    let sent = tokio::time::timeout(PUBLISH_TIMEOUT, pipeline.try_all::<RedisValue>()).await;
    match sent {
        Ok(results) if results.len() == batch.len() => results
            .into_iter()
            .map(|result| result.map(drop).map_err(unavailable))
            .collect(),
        Ok(results) => {
            let reason = format!(
                "redis answered {} of {} publications",
                results.len(),
                batch.len()
            );
            vec![Err(BrokerError::Unavailable(reason)); batch.len()]
        }
        Err(_elapsed) => vec![Err(unconfirmed()); batch.len()],
    }
}

fn unavailable(err: fred::error::Error) -> BrokerError {
    if *err.kind() == fred::error::ErrorKind::Timeout {
        unconfirmed()
    } else {
        BrokerError::Unavailable(format!("redis refused the publish: {err}"))
    }
}

/// A publish Redis did not confirm in time: it may still go out (a connection that hangs
/// rather than breaks keeps its queue), which the reason says rather than hide.
fn unconfirmed() -> BrokerError {
    BrokerError::Unconfirmed(PUBLISH_TIMEOUT)
}
