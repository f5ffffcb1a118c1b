//! A client of the server API (`api::server_api`), for the management commands of the CLI
//! (`switchboard publish`, `disconnect`, `connections`, `history`): the Django management commands of the
//! API Gateway seed, without a database. It talks to any node; the node answers for the cluster.
//! Also the `switchboard health` check (`check_health`), which needs no key.

use std::time::Duration;

use serde_json::{Value, json};

/// How long one API call may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ApiClientError {
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the server API answered {status}: {reason}")]
    Refused { status: u16, reason: String },
    #[error("{0}")]
    Usage(String),
}

/// Who a disconnect is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectTarget {
    User(String),
    Session(String),
    Connection(String),
}

pub struct ApiClient {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl ApiClient {
    /// `base` is the node's URL (`http://127.0.0.1:8080`); `key` is `[api] key`.
    pub fn new(base: &str, key: &str) -> Result<Self, ApiClientError> {
        if key.is_empty() {
            return Err(ApiClientError::Usage(
                "no API key: pass --key, set SWITCHBOARD_API_KEY, or set [api] key in --config"
                    .to_owned(),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|err| ApiClientError::Usage(format!("cannot build an HTTP client: {err}")))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            key: key.to_owned(),
            http,
        })
    }

    pub async fn publish(&self, channel: &str, data: Value) -> Result<Value, ApiClientError> {
        self.post("/api/publish", json!({ "channel": channel, "data": data }))
            .await
    }

    pub async fn disconnect(
        &self,
        target: &DisconnectTarget,
        code: Option<u16>,
        reason: Option<&str>,
    ) -> Result<Value, ApiClientError> {
        let mut body = match target {
            DisconnectTarget::User(user) => json!({ "user": user }),
            DisconnectTarget::Session(session) => json!({ "session": session }),
            DisconnectTarget::Connection(connection) => json!({ "connection": connection }),
        };
        if let Some(code) = code {
            body["code"] = json!(code);
        }
        if let Some(reason) = reason {
            body["reason"] = json!(reason);
        }
        self.post("/api/disconnect", body).await
    }

    /// `query`: `[("user", "42")]`, `[("channel", "room:1")]` or nothing.
    pub async fn connections(&self, query: &[(&str, &str)]) -> Result<Value, ApiClientError> {
        self.get("/api/connections", query).await
    }

    /// `query`: `[("channel", "room:1"), ("since", "17"), ("limit", "100")]`, and `before`,
    /// `newest_first`.
    pub async fn history(&self, query: &[(&str, &str)]) -> Result<Value, ApiClientError> {
        self.get("/api/history", query).await
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, ApiClientError> {
        let request = self.http.post(format!("{}{path}", self.base)).json(&body);
        self.send(request).await
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, ApiClientError> {
        let request = self.http.get(format!("{}{path}", self.base)).query(query);
        self.send(request).await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, ApiClientError> {
        let response = request.bearer_auth(&self.key).send().await.map_err(|err| {
            ApiClientError::Unreachable {
                url: self.base.clone(),
                reason: err.to_string(),
            }
        })?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            Ok(body)
        } else {
            let reason = body
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("no reason given")
                .to_owned();
            Err(ApiClientError::Refused {
                status: status.as_u16(),
                reason,
            })
        }
    }
}

/// How long `switchboard health` waits for an answer.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);

/// The URL `switchboard health` checks on a node bound to `bind`: a wildcard address
/// (`0.0.0.0`, `::`) is asked on loopback, as a container's health check runs beside the node.
pub fn local_url(bind: std::net::SocketAddr, path: &str) -> String {
    let host = match bind.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!(
        "http://{}{path}",
        std::net::SocketAddr::new(host, bind.port())
    )
}

/// `GET url`: `Ok` with the body on a 2xx answer within [`HEALTH_TIMEOUT`]; the container
/// `HEALTHCHECK` and scripts use it through `switchboard health` (the runtime image has no curl).
pub async fn check_health(url: &str) -> Result<String, ApiClientError> {
    let unreachable = |err: reqwest::Error| ApiClientError::Unreachable {
        url: url.to_owned(),
        reason: err.to_string(),
    };
    let response = reqwest::Client::builder()
        .timeout(HEALTH_TIMEOUT)
        .build()
        .map_err(|err| ApiClientError::Usage(format!("cannot build an HTTP client: {err}")))?
        .get(url)
        .send()
        .await
        .map_err(unreachable)?;
    let status = response.status();
    let body = response.text().await.map_err(unreachable)?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(ApiClientError::Refused {
            status: status.as_u16(),
            reason: body,
        })
    }
}

/// Connection records (`GET /api/connections`'s `connections`) as an aligned table.
/// `switchboard history`'s output: the channel's position, then one line per publication
/// (offset, publisher, data as JSON).
pub fn history_lines(answer: &Value) -> String {
    let mut lines = vec![format!(
        "# {} at offset {} (epoch {})",
        answer["channel"].as_str().unwrap_or("-"),
        answer["offset"],
        answer["epoch"].as_str().unwrap_or("-")
    )];
    for publication in answer["publications"].as_array().into_iter().flatten() {
        lines.push(format!(
            "{}\t{}\t{}",
            publication["offset"],
            publication["from"].as_str().unwrap_or("-"),
            publication["data"]
        ));
    }
    lines.join("\n")
}

pub fn connections_table(answer: &Value) -> String {
    let mut rows = vec![[
        "ID".to_owned(),
        "USER".to_owned(),
        "SESSION".to_owned(),
        "NODE".to_owned(),
        "CONNECTED_AT".to_owned(),
        "CHANNELS".to_owned(),
    ]];
    let text = |value: &Value| value.as_str().unwrap_or("-").to_owned();
    for record in answer["connections"].as_array().into_iter().flatten() {
        let channels: Vec<&str> = record["channels"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        rows.push([
            text(&record["id"]),
            text(&record["user"]),
            text(&record["session"]),
            text(&record["node"]),
            record["connected_at"].to_string(),
            channels.join(","),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|column| rows.iter().map(|row| row[column].len()).max().unwrap_or(0))
        .collect();
    let mut table = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        table.push_str(cells.join("  ").trim_end());
        table.push('\n');
    }
    if answer["truncated"].as_bool() == Some(true) {
        table.push_str("(more connections than --limit; showing the first)\n");
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_has_a_header_and_a_row_per_connection() {
        let answer = json!({"connections": [
            {"id": "c_1", "user": "42", "session": null, "node": "n1", "connected_at": 5, "channels": ["a", "b"]}
        ], "truncated": false});
        let table = connections_table(&answer);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("ID"));
        assert!(
            lines[1].starts_with("c_1") && lines[1].ends_with("a,b"),
            "{table}"
        );
    }

    #[test]
    fn health_is_asked_on_loopback_when_the_node_binds_every_address() {
        let url = |bind: &str| local_url(bind.parse().expect("address"), "/healthz");
        assert_eq!(url("0.0.0.0:8080"), "http://127.0.0.1:8080/healthz");
        assert_eq!(url("[::]:9000"), "http://[::1]:9000/healthz");
        assert_eq!(url("10.1.2.3:80"), "http://10.1.2.3:80/healthz");
    }

    #[test]
    fn a_client_needs_a_key() {
        assert!(matches!(
            ApiClient::new("http://127.0.0.1:1", ""),
            Err(ApiClientError::Usage(_))
        ));
    }
}
