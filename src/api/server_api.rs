//! The server API: what a back end calls over HTTP to act on clients and see who is connected,
//! cluster-wide. JSON in, JSON out, `Authorization: Bearer <[api] key>` on every call.
//!
//! | endpoint | body or query | does |
//! |---|---|---|
//! | `POST /api/publish` | `{channel, data}` or `{channels: [...], data}` | publishes as the server (no `from`) |
//! | `POST /api/send` | `{user, data}` or `{connection, data}` | a `message` without a channel to those sockets |
//! | `POST /api/disconnect` | `{user \| session \| connection, code?, reason?}` | closes those sockets on every node (default 4002) |
//! | `GET /api/connections` | `user=…` or `channel=…` (or neither), `limit` | connection records |
//! | `GET /api/channels` | `prefix=…` | channels with their connection counts |
//! | `GET /api/presence` | `channel=…` (a `presence = true` channel) | its users and connection count |
//! | `GET /api/history` | `channel=…` (a channel that keeps history), `since`, `before`, `limit`, `newest_first` | its position and a page of its publications |
//!
//! With no key set the API is off (404). A wrong key is 401; a bad body or query is 400 with a
//! reason naming the field; the broker or registry being unreachable is 503 (nothing was done,
//! so a retry is safe). A publish to several channels of which only some went out is 207 with
//! the channels published and those that failed, so a retry can name only the failed ones.
//! The API is the back end's: channel rules do not apply to it.

use std::collections::HashMap;

use actix_web::http::StatusCode;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::AppState;
use super::refusal::Refusal;
use crate::broker::{BrokerError, HistoryQuery, Publication, Topic};
use crate::hub::HistoryError;
use crate::metrics as names;
use crate::protocol::{ChannelName, ControlOp, DecodeError, RefusalCode};
use crate::roster::ConnectionFilter;

/// Records returned by `GET /api/connections` when no `limit` is given.
pub(crate) const DEFAULT_LIMIT: usize = 1_000;
/// Publications one `GET /api/history` returns when no `limit` is given, and at most.
pub(crate) const DEFAULT_HISTORY_PAGE: usize = 100;
pub(crate) const MAX_HISTORY_PAGE: usize = 1_000;
/// Channels one `POST /api/publish` may name.
pub(crate) const MAX_CHANNELS_PER_PUBLISH: usize = 1_000;

/// Every endpoint, the `endpoint` label of `switchboard_api_requests_total`.
pub(crate) const ENDPOINTS: [&str; 7] = [
    "publish",
    "send",
    "disconnect",
    "connections",
    "channels",
    "presence",
    "history",
];

/// Registers the API's routes.
pub(super) fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/api/publish", web::post().to(publish))
        .route("/api/send", web::post().to(send))
        .route("/api/disconnect", web::post().to(disconnect))
        .route("/api/connections", web::get().to(connections))
        .route("/api/channels", web::get().to(channels))
        .route("/api/presence", web::get().to(presence))
        .route("/api/history", web::get().to(history));
}

/// A handled call's status (200, or 207 for a partial publish) and body.
type ApiResult = Result<(StatusCode, Value), Refusal>;

/// Checks the key, runs the handler, records the metric, renders the answer.
async fn answer<F>(
    endpoint: &'static str,
    request: &HttpRequest,
    state: &AppState,
    handler: F,
) -> HttpResponse
where
    F: Future<Output = ApiResult>,
{
    let result = match authorize(request, state) {
        Ok(()) => handler.await,
        Err(err) => Err(err),
    };
    let response = match result {
        Ok((status, body)) => HttpResponse::build(status).json(body),
        Err(refusal) => refusal.response(),
    };
    metrics::counter!(names::API_REQUESTS, "endpoint" => endpoint, "status" => response.status().as_str().to_owned())
        .increment(1);
    response
}

fn authorize(request: &HttpRequest, state: &AppState) -> Result<(), Refusal> {
    let Some(key) = state.api_key.as_deref() else {
        return Err(Refusal::new(
            RefusalCode::NotFound,
            "the server API is off; set [api] key to turn it on",
        ));
    };
    let offered = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    if constant_time_equal(offered.trim().as_bytes(), key.as_bytes()) {
        Ok(())
    } else {
        Err(Refusal::new(
            RefusalCode::Unauthorized,
            "missing or wrong API key (Authorization: Bearer <[api] key>)",
        ))
    }
}

/// Compares without stopping at the first difference, so timing does not leak the key.
fn constant_time_equal(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len()
        && left
            .iter()
            .zip(right)
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            == 0
}

/// Parses a JSON body into `T`, naming the offending field on error.
fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Refusal> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if path == "." || path.is_empty() {
            bad_request(format!("body: {inner}"))
        } else {
            bad_request(format!("{path}: {inner}"))
        }
    })
}

fn bad_request(reason: impl Into<String>) -> Refusal {
    Refusal::new(RefusalCode::BadRequest, reason)
}

/// The `data` of a publication: required, and within the nesting limit every way in shares.
fn required_data(data: Option<Value>) -> Result<Value, Refusal> {
    let data = data.ok_or_else(|| bad_request("data: required"))?;
    crate::protocol::depth::check_field(&data, 2)
        .map_err(|err| bad_request(format!("data: {err}")))?;
    Ok(data)
}

fn channel(name: &str, field: &str) -> Result<ChannelName, Refusal> {
    ChannelName::parse(name).map_err(|err| bad_request(format!("{field}: {err}: {name:?}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    channel: Option<String>,
    channels: Option<Vec<String>>,
    data: Option<Value>,
}

async fn publish(
    request: HttpRequest,
    bytes: web::Bytes,
    state: web::Data<AppState>,
) -> HttpResponse {
    answer("publish", &request, &state, async {
        let PublishBody {
            channel: one,
            channels: many,
            data,
        } = body(&bytes)?;
        let data = required_data(data)?;
        let targets = match (one, many) {
            (Some(name), None) => vec![channel(&name, "channel")?],
            (None, Some(names)) if names.is_empty() => {
                return Err(bad_request("channels: must name at least one channel"));
            }
            (None, Some(names)) if names.len() > MAX_CHANNELS_PER_PUBLISH => {
                return Err(bad_request(format!(
                    "channels: at most {MAX_CHANNELS_PER_PUBLISH} per call"
                )));
            }
            (None, Some(names)) => names
                .iter()
                .enumerate()
                .map(|(index, name)| channel(name, &format!("channels[{index}]")))
                .collect::<Result<_, _>>()?,
            _ => {
                return Err(bad_request("channel: give either channel or channels"));
            }
        };
        let results = futures_util::future::join_all(targets.iter().map(|target| {
            state
                .hub
                .publish(Publication::new(target.clone(), data.clone(), None))
        }))
        .await;
        publish_outcome(targets.into_iter().zip(results).collect())
    })
    .await
}

/// The answer to a publish, from each channel's result: 200 when all went out, 503 when none
/// did (a retry is safe), 207 with the channels published and those that failed otherwise.
fn publish_outcome(results: Vec<(ChannelName, Result<(), BrokerError>)>) -> ApiResult {
    let total = results.len();
    let (published, failed): (Vec<_>, Vec<_>) =
        results.into_iter().partition(|(_, result)| result.is_ok());
    match (published.len(), failed.first()) {
        (_, None) => Ok((StatusCode::OK, json!({ "published": total }))),
        (0, Some((_, Err(err)))) => Err(Refusal::broker_unavailable(err)),
        (count, _) => {
            let failed: Vec<Value> = failed
                .iter()
                .filter_map(|(channel, result)| {
                    let err = result.as_ref().err()?;
                    tracing::warn!(%channel, error = %err, "server API publish failed for one channel");
                    Some(json!({
                        "channel": channel.as_str(),
                        "error": "backend_unavailable",
                        "reason": err.client_reason(),
                    }))
                })
                .collect();
            let channels: Vec<&str> = published
                .iter()
                .map(|(channel, _)| channel.as_str())
                .collect();
            Ok((
                StatusCode::MULTI_STATUS,
                json!({ "published": count, "channels": channels, "failed": failed }),
            ))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    user: Option<String>,
    connection: Option<String>,
    data: Option<Value>,
}

async fn send(request: HttpRequest, bytes: web::Bytes, state: web::Data<AppState>) -> HttpResponse {
    answer("send", &request, &state, async {
        let SendBody {
            user,
            connection,
            data,
        } = body(&bytes)?;
        let data = required_data(data)?;
        let topic = match (user, connection) {
            (Some(user), None) if !user.is_empty() => Topic::User(user.into()),
            (None, Some(connection)) if !connection.is_empty() => {
                Topic::Connection(connection.into())
            }
            _ => {
                return Err(bad_request("user: give exactly one of user, connection"));
            }
        };
        state
            .hub
            .publish(Publication::new(topic, data, None))
            .await
            .map_err(|err| Refusal::broker_unavailable(&err))?;
        Ok((StatusCode::OK, json!({ "ok": true })))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    user: Option<String>,
    session: Option<String>,
    connection: Option<String>,
    code: Option<u16>,
    reason: Option<String>,
}

async fn disconnect(
    request: HttpRequest,
    bytes: web::Bytes,
    state: web::Data<AppState>,
) -> HttpResponse {
    answer("disconnect", &request, &state, async {
        let DisconnectBody {
            user,
            session,
            connection,
            code,
            reason,
        } = body(&bytes)?;
        let wire = json!({
            "op": "disconnect", "user": user, "session": session, "connection": connection,
            "code": code, "reason": reason,
        });
        // The control op's own validation (one target, a usable code, a short reason), with
        // absent fields dropped rather than sent as nulls.
        let wire: serde_json::Map<String, Value> = wire
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, value)| !value.is_null())
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        let op =
            ControlOp::decode(Value::Object(wire).to_string().as_bytes()).map_err(
                |err| match err {
                    DecodeError::Invalid(reason) => bad_request(reason),
                    other => bad_request(other.to_string()),
                },
            )?;
        state
            .hub
            .broker()
            .publish_control(op)
            .await
            .map_err(|err| Refusal::broker_unavailable(&err))?;
        Ok((StatusCode::OK, json!({ "ok": true })))
    })
    .await
}

/// The query string as a map (the last value of a repeated key wins).
fn query(request: &HttpRequest) -> HashMap<String, String> {
    form_urlencoded::parse(request.query_string().as_bytes())
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect()
}

fn scope(state: &AppState) -> &'static str {
    if state.roster.is_cluster_wide() {
        "cluster"
    } else {
        "node"
    }
}

async fn connections(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    answer("connections", &request, &state, async {
        let query = query(&request);
        let filter = match (query.get("user"), query.get("channel")) {
            (None, None) => ConnectionFilter::All,
            (Some(user), None) => ConnectionFilter::User(user.clone()),
            (None, Some(name)) => ConnectionFilter::Channel(channel(name, "channel")?.to_string()),
            (Some(_), Some(_)) => {
                return Err(bad_request("user: give user or channel, not both"));
            }
        };
        let limit = match query.get("limit") {
            None => DEFAULT_LIMIT,
            Some(limit) => limit
                .parse::<usize>()
                .ok()
                .filter(|limit| *limit > 0)
                .ok_or_else(|| bad_request("limit: must be a positive integer"))?,
        };
        let (records, truncated) = state.roster.connections(&filter, limit).await?;
        Ok((
            StatusCode::OK,
            json!({ "connections": records, "truncated": truncated, "scope": scope(&state) }),
        ))
    })
    .await
}

async fn channels(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    answer("channels", &request, &state, async {
        let query = query(&request);
        let prefix = query.get("prefix").map_or("", String::as_str);
        let channels = state.roster.channels(prefix).await?;
        Ok((
            StatusCode::OK,
            json!({ "channels": channels, "scope": scope(&state) }),
        ))
    })
    .await
}

async fn presence(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    answer("presence", &request, &state, async {
        let query = query(&request);
        let name = query
            .get("channel")
            .ok_or_else(|| bad_request("channel: required"))?;
        let channel = channel(name, "channel")?;
        let has_presence = state
            .settings
            .policy
            .rule_for(channel.as_str())
            .is_some_and(|rule| rule.presence);
        if !has_presence {
            return Err(bad_request(format!(
                "channel: presence is off for {channel} (set presence = true in its [[channels]] rule)"
            )));
        }
        let presence = state.roster.presence(channel.as_str()).await?;
        Ok((StatusCode::OK, json!(presence)))
    })
    .await
}

/// `GET /api/history`: the channel's position and, oldest first after `since` (or newest
/// first before `before`, with `newest_first=true`), at most `limit` of its publications.
async fn history(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    answer("history", &request, &state, async {
        let query = query(&request);
        let name = query
            .get("channel")
            .ok_or_else(|| bad_request("channel: required"))?;
        let channel = channel(name, "channel")?;
        let offset = |field: &str| -> Result<Option<u64>, Refusal> {
            query
                .get(field)
                .map(|value| {
                    value.parse::<u64>().map_err(|_| {
                        bad_request(format!("{field}: must be a non-negative integer"))
                    })
                })
                .transpose()
        };
        let limit = match query.get("limit") {
            None => DEFAULT_HISTORY_PAGE,
            Some(limit) => limit
                .parse::<usize>()
                .ok()
                .filter(|limit| *limit <= MAX_HISTORY_PAGE)
                .ok_or_else(|| {
                    bad_request(format!("limit: must be between 0 and {MAX_HISTORY_PAGE}"))
                })?,
        };
        let newest_first = match query.get("newest_first").map(String::as_str) {
            None | Some("false" | "0") => false,
            Some("true" | "1") => true,
            Some(_) => return Err(bad_request("newest_first: must be true or false")),
        };
        let read = HistoryQuery {
            since: offset("since")?,
            before: offset("before")?,
            limit,
            newest_first,
        };
        let history = state.hub.history(&channel, read).await.map_err(|err| match err {
            HistoryError::NotKept(channel) => bad_request(format!(
                "channel: {channel} keeps no history (set history_size and history_ttl in its [[channels]] rule)"
            )),
            HistoryError::Broker(err) => Refusal::broker_unavailable(&err),
        })?;
        let publications: Vec<Value> = history
            .publications
            .iter()
            .map(|publication| {
                let mut entry = json!({
                    "offset": publication.position.as_ref().map(|position| position.offset),
                    "data": &publication.data,
                });
                if let Some(from) = &publication.from {
                    entry["from"] = json!(from);
                }
                entry
            })
            .collect();
        Ok((
            StatusCode::OK,
            json!({
                "channel": channel.as_str(),
                "offset": history.position.offset,
                "epoch": &*history.position.epoch,
                "publications": publications,
            }),
        ))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_whole() {
        assert!(constant_time_equal(b"secret", b"secret"));
        assert!(!constant_time_equal(b"secret", b"secreT"));
        assert!(!constant_time_equal(b"secret", b"secret2"));
        assert!(!constant_time_equal(b"", b"secret"));
    }
}
