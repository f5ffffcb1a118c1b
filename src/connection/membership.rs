//! The one way a connection joins and leaves channels, whoever asks: the handshake's channels,
//! a client's `join`/`leave`, the back end's instructions, and the close.
//!
//! A join is admitted (valid name, channel limit, the channel rules unless the back end asked),
//! recorded in the connection's channel map under a fresh [`Membership`], and sent to the hub;
//! [`Connection::finish_join`] settles it when the hub answers: live ([`Joined`], which the
//! caller announces to a presence channel once its own answer to the client is queued, so a
//! `welcome` or `reply` comes first), rolled back (the broker could not subscribe), or
//! superseded (the connection left
//! the channel, and maybe joined it again, before the answer came: the answer then belongs to a
//! membership that no longer exists and changes nothing). A leave ends the membership wherever
//! its join is, so the channel map, the groups, the directory and the broker's subscriptions
//! agree after any interleaving of joins, leaves and the close.
//!
//! On a channel that keeps history, a client's join (it has an id, and maybe `since`) is
//! answered by the group itself, after any replay, so the reply sits between the replayed and
//! the live messages (docs/protocol.md §7); the connection then sends no reply of its own.

use std::future::Future;
use std::pin::Pin;

use actix::prelude::*;

use serde_json::json;

use super::Connection;
use crate::broker::{BrokerFuture, Publication};
use crate::hub::{self, JoinError, JoinRequest, Membership, Outbound};
use crate::protocol::{ChannelName, ErrorCode, ServerFrame};

/// Why a join or leave was refused: the `error` frame's code and reason.
pub(super) type Refusal = (ErrorCode, String);

/// A join sent to the hub, waiting for its answer.
pub(super) struct PendingJoin {
    pub(super) channel: ChannelName,
    membership: Membership,
    joined: Pin<Box<dyn Future<Output = Result<hub::Joined, JoinError>>>>,
}

/// A join's answer, with what it belongs to.
pub(super) struct JoinAnswer {
    pub(super) channel: ChannelName,
    membership: Membership,
    result: Result<hub::Joined, JoinError>,
}

impl JoinAnswer {
    /// Whether the group answered the client itself (see the module doc).
    fn answered_by_group(&self) -> bool {
        matches!(self.result, Ok(hub::Joined::Answered))
    }
}

impl PendingJoin {
    /// Waits for the hub's answer.
    pub(super) async fn answer(self) -> JoinAnswer {
        JoinAnswer {
            result: self.joined.await,
            channel: self.channel,
            membership: self.membership,
        }
    }
}

/// A join that completed: the connection is a member. Announce it ([`Connection::announce_join`])
/// after the frame that answers the join.
#[must_use = "a completed join is announced to a presence channel"]
pub(super) struct Joined(pub(super) ChannelName);

/// The reason a client gets for a join that its own leave overtook.
pub(super) const SUPERSEDED_REASON: &str = "left the channel before the join completed";

impl Connection {
    /// Joins the channels named at the handshake (and waits for the user's topic subscription),
    /// then sends `welcome` (the first frame), then an `error` for each refused channel, then
    /// starts reading client frames.
    pub(super) fn join_initial_channels(
        &mut self,
        ctx: &mut Context<Self>,
        user_subscribed: BrokerFuture,
    ) {
        let (granted, hook_publications) = match self.connect_instructions.take() {
            Some(instructions) => (instructions.join, instructions.publish),
            None => (Vec::new(), Vec::new()),
        };
        let requested = std::mem::take(&mut self.initial_channels)
            .into_iter()
            .map(|name| (name, true))
            .chain(granted.into_iter().map(|name| (name, false)))
            .collect();
        let (mut refused, joins) = self.join_all(requested);
        let id = self.id.clone();
        let user_subscribed = async move {
            if let Err(err) = user_subscribed.await {
                // The broker keeps the reference and subscribes once it can.
                tracing::debug!(connection = %id, error = %err, "user topic not subscribed yet");
            }
        };
        futures_util::future::join(joins, user_subscribed)
            .into_actor(self)
            .map(move |(answers, ()), connection, ctx| {
                let mut joined = Vec::new();
                for answer in answers {
                    match connection.finish_join(answer) {
                        Ok(channel) => joined.push(channel),
                        Err(refusal) => refused.push(refusal),
                    }
                }
                let names: Vec<&str> = joined.iter().map(|joined| joined.0.as_str()).collect();
                let welcome = ServerFrame::Welcome {
                    connection_id: &connection.id,
                    user: connection.identity.user.as_deref(),
                    channels: &names,
                    expires_at: connection.identity.expires_at,
                };
                // Ahead of whatever the channels joined have queued already.
                let welcome_to = connection.welcome.take();
                match (connection.encoding.encode(&welcome), welcome_to) {
                    (Ok(frame), Some(to)) => {
                        let _ = to.send(frame);
                    }
                    (Ok(frame), None) => connection.enqueue(ctx, Outbound::Frame(frame)),
                    (Err(err), _) => tracing::error!(error = %err, "cannot encode welcome"),
                }
                for (code, reason) in refused {
                    connection.error(ctx, None, code, &reason);
                }
                for channel in joined {
                    connection.announce_join(channel);
                }
                connection.publish_for_backend(ctx, hook_publications);
                if let Some(inbound) = connection.inbound.take() {
                    ctx.add_stream(inbound);
                }
                connection.start_heartbeat(ctx);
            })
            .spawn(ctx);
    }

    /// Tells a presence channel's members that this connection joined or left it.
    pub(super) fn announce(&self, channel: &ChannelName, joined: bool) {
        let has_presence = self
            .settings
            .policy
            .rule_for(channel.as_str())
            .is_some_and(|rule| rule.presence);
        if !has_presence {
            return;
        }
        let who = json!({ "user": self.identity.user, "connection": &*self.id });
        let publishing = self
            .hub
            .publish(Publication::presence(channel.clone(), joined, who));
        let channel = channel.clone();
        actix::spawn(async move {
            if let Err(err) = publishing.await {
                tracing::debug!(%channel, error = %err, "presence event not published");
            }
        });
    }

    /// Starts joining `name`: `Ok(None)` when already a member, else the join in flight (settle
    /// its answer with [`finish_join`](Self::finish_join)). The channel rules are consulted only
    /// when `check_policy` (the back end's joins skip them; the channel limit always applies).
    pub(super) fn start_join(
        &mut self,
        name: &str,
        check_policy: bool,
        request: JoinRequest,
    ) -> Result<Option<PendingJoin>, Refusal> {
        let channel = super::parse_channel(name)?;
        if self.channels.contains_key(&channel) {
            return Ok(None);
        }
        if self.channels.len() >= self.settings.max_channels {
            return Err((
                ErrorCode::ChannelLimit,
                format!(
                    "may not join more than {} channels",
                    self.settings.max_channels
                ),
            ));
        }
        if check_policy && !self.settings.policy.may_join(&self.identity, name) {
            return Err((ErrorCode::Forbidden, format!("may not join {name}")));
        }
        let (membership, joined) = self.hub.join(channel.clone(), self.member(), request);
        self.channels.insert(channel.clone(), membership.clone());
        Ok(Some(PendingJoin {
            channel,
            membership,
            joined: Box::pin(joined),
        }))
    }

    /// Settles a join's answer: [`Joined`] when the connection is now a member, else why not,
    /// for the client.
    pub(super) fn finish_join(&mut self, answer: JoinAnswer) -> Result<Joined, Refusal> {
        let JoinAnswer {
            channel,
            membership,
            result,
        } = answer;
        let current = self
            .channels
            .get(&channel)
            .is_some_and(|held| held.is(&membership));
        if !current {
            return Err((ErrorCode::NotJoined, SUPERSEDED_REASON.to_owned()));
        }
        match result {
            Ok(_) if membership.go_live() => Ok(Joined(channel)),
            Ok(_) | Err(JoinError::Cancelled) => {
                self.channels.remove(&channel);
                Err((ErrorCode::NotJoined, SUPERSEDED_REASON.to_owned()))
            }
            // The hub ended the membership and undid its bookkeeping.
            Err(JoinError::BackendUnavailable(detail)) => {
                self.channels.remove(&channel);
                tracing::debug!(connection = %self.id, %channel, %detail, "join failed");
                Err((
                    ErrorCode::BrokerUnavailable,
                    crate::protocol::BROKER_UNAVAILABLE_REASON.to_owned(),
                ))
            }
        }
    }

    /// Tells a presence channel's members that this connection joined it.
    pub(super) fn announce_join(&self, Joined(channel): Joined) {
        self.announce(&channel, true);
    }

    /// Joins every channel of `names` at once (as members only: nothing to answer, nothing to
    /// replay); resolves (in the actor) to the channels joined and
    /// the refusals, in the order of `names`.
    pub(super) fn join_all(
        &mut self,
        names: Vec<(String, bool)>,
    ) -> (
        Vec<Refusal>,
        impl Future<Output = Vec<JoinAnswer>> + 'static + use<>,
    ) {
        let mut refused = Vec::new();
        let mut pending = Vec::new();
        for (name, check_policy) in names {
            match self.start_join(&name, check_policy, JoinRequest::default()) {
                Ok(Some(join)) => pending.push(join.answer()),
                Ok(None) => {}
                Err(refusal) => refused.push(refusal),
            }
        }
        (refused, futures_util::future::join_all(pending))
    }

    /// Leaves `channel` (announced to a presence channel if the join had been); `false` if the
    /// connection was not in it.
    pub(super) fn leave_channel(&mut self, channel: &ChannelName) -> bool {
        let Some(membership) = self.channels.remove(channel) else {
            return false;
        };
        self.hub.leave(channel, self.key, &membership);
        if membership.is_live() {
            self.announce(channel, false);
        }
        true
    }

    /// Leaves every channel (the close); returns the channels the connection was in.
    pub(super) fn leave_all(&mut self) -> Vec<ChannelName> {
        let channels: Vec<ChannelName> = self.channels.keys().cloned().collect();
        for channel in &channels {
            self.leave_channel(channel);
        }
        channels
    }

    /// Whether `name` is a channel whose members hear of joins and leaves.
    pub(super) fn has_presence(&self, name: &str) -> bool {
        self.settings
            .policy
            .rule_for(name)
            .is_some_and(|rule| rule.presence)
    }

    /// A client's `join`.
    pub(super) fn on_join(
        &mut self,
        ctx: &mut Context<Self>,
        id: Option<u64>,
        name: &str,
        since: Option<crate::protocol::Position>,
    ) {
        let joining_anew =
            super::parse_channel(name).is_ok_and(|channel| !self.channels.contains_key(&channel));
        if joining_anew
            && self.has_presence(name)
            && !self.presence_budget.try_take(std::time::Instant::now())
        {
            return self.error(
                ctx,
                id,
                ErrorCode::RateLimited,
                "too many joins and leaves of presence channels; slow down",
            );
        }
        let pending = match self.start_join(name, true, JoinRequest { id, since }) {
            Ok(Some(pending)) => pending,
            Ok(None) => return self.reply(ctx, id, &serde_json::Value::Null),
            Err((code, reason)) => return self.error(ctx, id, code, &reason),
        };
        pending
            .answer()
            .into_actor(self)
            .map(move |answer, connection, ctx| {
                let answered = answer.answered_by_group();
                match connection.finish_join(answer) {
                    Ok(joined) => {
                        if !answered {
                            connection.reply(ctx, id, &serde_json::Value::Null);
                        }
                        connection.announce_join(joined);
                    }
                    // The client has its reply; the leave that overtook the join follows it.
                    Err(_) if answered => {}
                    Err((code, reason)) => connection.error(ctx, id, code, &reason),
                }
            })
            .spawn(ctx);
    }

    /// A client's `leave`.
    pub(super) fn on_leave(&mut self, ctx: &mut Context<Self>, id: Option<u64>, name: &str) {
        let left = super::parse_channel(name).and_then(|channel| {
            if self.channels.contains_key(&channel) && self.has_presence(name) {
                // A leave always works, and spends the budget the next join needs.
                let _ = self.presence_budget.try_take(std::time::Instant::now());
            }
            if self.leave_channel(&channel) {
                Ok(())
            } else {
                Err((ErrorCode::NotJoined, format!("not joined to {name}")))
            }
        });
        match left {
            Ok(()) => self.reply(ctx, id, &serde_json::Value::Null),
            Err((code, reason)) => self.error(ctx, id, code, &reason),
        }
    }
}
