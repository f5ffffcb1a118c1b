//! The node's publishing path to Redis: one task, one bounded queue, in order.
//!
//! `RedisBroker::publish` puts each publication into the queue synchronously, in the caller's
//! order. The task takes whatever has accumulated (up to [`MAX_BATCH`]) and sends it as one
//! pipeline, so many publications cost one write and one round trip, and their order on the
//! connection is the order of the queue: one publisher's messages to one channel reach every
//! node in order. One pipeline is in flight at a time; the next batch accumulates meanwhile.
//!
//! A publication to a channel that keeps history is an `FCALL PREFIX_publish` rather than a
//! `PUBLISH`, in the same queue, so its order among the node's other publications holds too
//! (see [`super::functions`]); if Redis answers that the function is missing, the library is
//! installed and those publications are sent once more, before the next batch.
//!
//! Nothing waits for Redis to come back: while the client is disconnected, and for commands that
//! find it disconnected (`fail_fast`), every publication fails at once with
//! [`BrokerError::Unavailable`], which the publisher hears as `backend_unavailable`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::clients::{Client, Pipeline};
use fred::interfaces::{ClientLike, FunctionInterface, PubsubInterface};
use fred::types::Value as RedisValue;
use fred::types::config::Options;
use tokio::sync::{mpsc, oneshot};

use super::functions::{self, Functions};
use super::names::RedisChannel;
use super::{Shared, not_connected};
use crate::broker::{BrokerError, HistoryRule};
use crate::metrics as names;

/// Publications waiting for the pipeline before `publish` refuses more.
pub(super) const QUEUE_CAPACITY: usize = 16_384;
/// Publications per pipeline.
const MAX_BATCH: usize = 512;
/// How long a pipeline may take before its publications count as failed.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(3);

/// One publication waiting to be sent.
pub(super) struct Outgoing {
    pub(super) command: Command,
    /// Told the outcome; `None` for fire-and-forget (the readiness probe).
    pub(super) reply: Option<oneshot::Sender<Result<(), BrokerError>>>,
}

/// How a publication goes to Redis.
pub(super) enum Command {
    /// `PUBLISH` (`SPUBLISH` for a sharded channel) of the payload.
    Publish(RedisChannel, Bytes),
    /// `FCALL PREFIX_publish 1 <key> <envelope> <size> <ttl>`: recorded in the channel's history
    /// and published with its offset.
    Record {
        key: String,
        envelope: Bytes,
        rule: HistoryRule,
    },
}

/// Why one publication of a pipeline failed.
enum Failure {
    /// Redis has no history functions (yet): install them and send it again.
    FunctionMissing,
    Broker(BrokerError),
}

/// Sends what arrives on `queue` until every sender is gone.
pub(super) async fn run(shared: Arc<Shared>, mut queue: mpsc::Receiver<Outgoing>) {
    let options = Options {
        timeout: Some(PUBLISH_TIMEOUT),
        fail_fast: true,
        max_attempts: Some(1),
        ..Options::default()
    };
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let results = if shared.can_publish() {
            send_installing(&shared, &options, &batch).await
        } else {
            vec![Err(not_connected()); batch.len()]
        };
        let failed = results.iter().filter(|result| result.is_err()).count();
        metrics::counter!(names::BROKER_PUBLISHED).increment((batch.len() - failed) as u64);
        if failed > 0 {
            metrics::counter!(names::BROKER_PUBLISH_FAILURES).increment(failed as u64);
        }
        let recorded = batch
            .iter()
            .zip(&results)
            .filter(|(outgoing, result)| {
                matches!(outgoing.command, Command::Record { .. }) && result.is_ok()
            })
            .count();
        if recorded > 0 {
            metrics::counter!(names::HISTORY_APPENDS).increment(recorded as u64);
        }
        for (outgoing, result) in batch.drain(..).zip(results) {
            if let Some(reply) = outgoing.reply {
                let _ = reply.send(result);
            }
        }
    }
}

/// Sends one batch; publications refused because the history functions are missing are sent
/// once more after installing them. One result per publication, in order.
async fn send_installing(
    shared: &Shared,
    options: &Options,
    batch: &[Outgoing],
) -> Vec<Result<(), BrokerError>> {
    let client = &shared.publisher;
    let commands: Vec<&Command> = batch.iter().map(|outgoing| &outgoing.command).collect();
    let mut results = send(client, options, &shared.functions, &commands).await;
    let missing: Vec<usize> = (0..results.len())
        .filter(|&index| matches!(results[index], Err(Failure::FunctionMissing)))
        .collect();
    if !missing.is_empty() {
        let again: Vec<&Command> = missing.iter().map(|&index| commands[index]).collect();
        let retried = match shared.functions.install(client, shared.cluster).await {
            Ok(()) => send(client, options, &shared.functions, &again).await,
            Err(err) => again
                .iter()
                .map(|_| Err(Failure::Broker(err.clone())))
                .collect(),
        };
        for (index, result) in missing.into_iter().zip(retried) {
            results[index] = result;
        }
    }
    results
        .into_iter()
        .map(|result| {
            result.map_err(|failure| match failure {
                Failure::FunctionMissing => {
                    BrokerError::Unavailable("redis does not have the history functions".into())
                }
                Failure::Broker(err) => err,
            })
        })
        .collect()
}

/// Sends `commands` as one pipeline; one result per command, in order.
async fn send(
    client: &Client,
    options: &Options,
    functions: &Functions,
    commands: &[&Command],
) -> Vec<Result<(), Failure>> {
    let pipeline = Pipeline::from(client.with_options(options));
    for command in commands {
        // Queuing into a pipeline only buffers the command; it cannot fail on the network.
        let queued: Result<RedisValue, _> = match command {
            Command::Publish(channel, payload) => {
                let payload = RedisValue::Bytes(payload.clone());
                if channel.sharded {
                    pipeline.spublish(channel.name.as_str(), payload).await
                } else {
                    pipeline.publish(channel.name.as_str(), payload).await
                }
            }
            Command::Record {
                key,
                envelope,
                rule,
            } => {
                let [size, ttl] = functions::rule_args(*rule);
                let args = vec![
                    RedisValue::Bytes(envelope.clone()),
                    RedisValue::from(size),
                    RedisValue::from(ttl),
                ];
                pipeline
                    .fcall(functions.publish.as_str(), key.as_str(), args)
                    .await
            }
        };
        if let Err(err) = queued {
            tracing::warn!(error = %err, "cannot queue a publication");
        }
    }
    let sent = tokio::time::timeout(PUBLISH_TIMEOUT, pipeline.try_all::<RedisValue>()).await;
    let failed = |failure: fn() -> BrokerError| {
        commands
            .iter()
            .map(|_| Err(Failure::Broker(failure())))
            .collect()
    };
    match sent {
        Ok(results) if results.len() == commands.len() => results
            .into_iter()
            .map(|result| {
                result.map(drop).map_err(|err| {
                    if functions::is_missing(&err) {
                        Failure::FunctionMissing
                    } else {
                        Failure::Broker(unavailable(err))
                    }
                })
            })
            .collect(),
        Ok(results) => {
            tracing::warn!(
                answered = results.len(),
                sent = commands.len(),
                "redis answered only part of a pipeline"
            );
            failed(|| BrokerError::Unavailable("redis answered part of a pipeline".into()))
        }
        Err(_elapsed) => failed(unconfirmed),
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
