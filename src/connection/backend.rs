//! The connection's side of the back end (`crate::backend`): a custom action is POSTed to its
//! route from a spawned future (at most `[backend] max_calls_per_connection` at once) and the
//! answer carried out ([`Instructions`]: leaves, then joins, then publishes once the joins are
//! live, then the reply); the connect hook's publications are made once the `welcome` is out;
//! the `disconnect` hook hears of the close.
//!
//! What it is not: the HTTP calls themselves and what an answer means (`crate::backend`).

use actix::prelude::*;
use serde_json::{Value, json};

use super::Connection;
use crate::backend::{Caller, DISCONNECT_HOOK, Instructions};
use crate::broker::{BrokerFuture, Publication};
use crate::protocol::{ChannelName, CloseReason, ErrorCode};

impl Connection {
    pub(super) fn caller(&self) -> Caller {
        Caller {
            connection: self.id.clone(),
            user: self.identity.user.clone(),
            session: self.identity.session.clone(),
        }
    }

    /// A custom action: POSTed to its route, the answer carried out when it comes.
    pub(super) fn on_route(
        &mut self,
        ctx: &mut Context<Self>,
        id: Option<u64>,
        action: String,
        body: Value,
    ) {
        let routed = self
            .settings
            .backend
            .clone()
            .and_then(|backend| backend.route_for(&action).map(|route| (backend, route)));
        let Some((backend, route)) = routed else {
            return self.error(
                ctx,
                id,
                ErrorCode::UnknownAction,
                &format!("no route handles action {action:?}"),
            );
        };
        let limit = backend.max_calls_per_connection();
        if self.route_calls >= limit {
            return self.error(
                ctx,
                id,
                ErrorCode::RateLimited,
                &format!("{limit} back-end calls are already in flight; wait for their answers"),
            );
        }
        self.route_calls += 1;
        let caller = self.caller();
        async move { backend.call(&route, &caller, &action, body, &[]).await }
            .into_actor(self)
            .map(move |result, connection, ctx| {
                connection.route_calls = connection.route_calls.saturating_sub(1);
                match result {
                    Ok(instructions) => connection.carry_out(ctx, id, instructions),
                    Err(err) => {
                        connection.error(ctx, id, ErrorCode::BackendError, &err.client_reason())
                    }
                }
            })
            .spawn(ctx);
    }

    /// Does what the back end answered: leaves, then joins, then publishes; then the reply
    /// (or, if a join or publish failed, an error with the frame's id).
    pub(super) fn carry_out(
        &mut self,
        ctx: &mut Context<Self>,
        id: Option<u64>,
        instructions: Instructions,
    ) {
        for name in &instructions.leave {
            if let Ok(channel) = ChannelName::parse(name) {
                self.leave_channel(&channel);
            }
        }
        let joins = instructions
            .join
            .into_iter()
            .map(|name| (name, false))
            .collect();
        let (refused, joins) = self.join_all(joins);
        let mut refused: Vec<String> = refused.into_iter().map(|(_, reason)| reason).collect();
        let (publications, reply) = (instructions.publish, instructions.reply);
        // Publish once the joins are live, so the connection hears what it publishes to a
        // channel it was just told to join.
        joins
            .into_actor(self)
            .then(move |answers, connection, _ctx| {
                for answer in answers {
                    match connection.finish_join(answer) {
                        Ok(joined) => connection.announce_join(joined),
                        Err((_, reason)) => refused.push(reason),
                    }
                }
                connection
                    .publish_as_server(publications)
                    .into_actor(connection)
                    .map(move |failures, connection, ctx| {
                        refused.extend(failures);
                        if refused.is_empty() {
                            connection.reply(ctx, id, &reply);
                        } else {
                            let reason = format!(
                                "the back end's instructions failed: {}",
                                refused.join("; ")
                            );
                            connection.error(ctx, id, ErrorCode::BrokerUnavailable, &reason);
                        }
                    })
            })
            .spawn(ctx);
    }

    /// Makes the back end's publications, as the server (no `from`); resolves to why each
    /// one that failed did (a bad channel name, the broker refusing).
    pub(super) fn publish_as_server(
        &self,
        publications: Vec<(String, Value)>,
    ) -> impl std::future::Future<Output = Vec<String>> + use<> {
        let mut failures = Vec::new();
        let publishes: Vec<BrokerFuture> = publications
            .into_iter()
            .filter_map(|(name, data)| match super::parse_channel(&name) {
                Ok(channel) => Some(self.hub.publish(Publication::new(channel, data, None))),
                Err((_, reason)) => {
                    failures.push(reason);
                    None
                }
            })
            .collect();
        async move {
            let published = futures_util::future::join_all(publishes).await;
            failures.extend(published.into_iter().filter_map(Result::err).map(|err| {
                tracing::debug!(error = %err, "a back end's publication failed");
                err.client_reason()
            }));
            failures
        }
    }

    /// Makes the connect hook's publications; failures are reported as `error` frames.
    pub(super) fn publish_for_backend(
        &mut self,
        ctx: &mut Context<Self>,
        publications: Vec<(String, Value)>,
    ) {
        if publications.is_empty() {
            return;
        }
        self.publish_as_server(publications)
            .into_actor(self)
            .map(|failures, connection, ctx| {
                for reason in failures {
                    connection.error(ctx, None, ErrorCode::BrokerUnavailable, &reason);
                }
            })
            .spawn(ctx);
    }

    /// Tells the `disconnect` hook, if any, that this socket closed (with which code, and which
    /// channels it was in). Fire and forget, bounded like every back-end call.
    pub(super) fn call_disconnect_hook(&self, channels: &[ChannelName]) {
        let Some(backend) = self.settings.backend.clone() else {
            return;
        };
        let Some(route) = backend.disconnect_hook() else {
            return;
        };
        // No close frame either way: the socket dropped (1006).
        let (code, reason) = self.closed_with.clone().unwrap_or((
            CloseReason::CONNECTION_LOST.code,
            CloseReason::CONNECTION_LOST.text.to_owned(),
        ));
        let body = json!({
            "code": code.code(),
            "reason": reason,
            "channels": channels.iter().map(ChannelName::as_str).collect::<Vec<_>>(),
        });
        let caller = self.caller();
        actix::spawn(async move {
            let _ = backend
                .call(&route, &caller, DISCONNECT_HOOK, body, &[])
                .await;
        });
    }
}
