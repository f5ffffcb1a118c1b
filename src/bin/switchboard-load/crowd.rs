//! Opening many connections the way every mode needs them: spread over the nodes and over
//! source addresses, with credentials, a bounded number of handshakes in flight, each one
//! waiting for its `welcome` and, when asked, for the reply to its `join`.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::sync::Semaphore;

use crate::wire::{Client, Endpoint, Sources, WireError};

/// How long one handshake, or one join, may take.
pub(crate) const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// What every connection of a run presents at the handshake.
#[derive(Debug, Clone)]
pub(crate) enum Credentials {
    None,
    /// One bearer token for every connection.
    Static(String),
    /// Pre-signed tokens handed out round-robin (signing is kept out of the measured time).
    Minted(Arc<[String]>),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CredentialsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not an RSA private key in PEM: {source}")]
    Key {
        path: String,
        source: jsonwebtoken::errors::Error,
    },
    #[error("cannot sign a token: {0}")]
    Sign(jsonwebtoken::errors::Error),
}

/// The claims of a minted token.
#[derive(serde::Serialize)]
struct Claims<'a> {
    sub: String,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

impl Credentials {
    /// `count` RS256 tokens for users `load-0` … signed with the PEM private key at `path`,
    /// valid for an hour.
    pub(crate) fn mint_rs256(
        path: &str,
        count: usize,
        issuer: Option<&str>,
        audience: Option<&str>,
    ) -> Result<Self, CredentialsError> {
        let pem = std::fs::read(path).map_err(|source| CredentialsError::Read {
            path: path.to_owned(),
            source,
        })?;
        let key = EncodingKey::from_rsa_pem(&pem).map_err(|source| CredentialsError::Key {
            path: path.to_owned(),
            source,
        })?;
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |now| now.as_secs())
            + 3600;
        let tokens = (0..count.max(1))
            .map(|index| {
                let claims = Claims {
                    sub: format!("load-{index}"),
                    exp,
                    iss: issuer,
                    aud: audience,
                };
                jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key)
                    .map_err(CredentialsError::Sign)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::Minted(tokens.into()))
    }

    fn headers_for(&self, index: usize) -> Vec<(String, String)> {
        let token = match self {
            Self::None => return Vec::new(),
            Self::Static(token) => token,
            Self::Minted(tokens) => &tokens[index % tokens.len()],
        };
        vec![("Authorization".to_owned(), format!("Bearer {token}"))]
    }
}

/// The `type` of a server frame (setup frames only; the hot path reads stamps in place).
fn frame_type(text: &str) -> Option<String> {
    let frame: serde_json::Value = serde_json::from_str(text).ok()?;
    frame.get("type")?.as_str().map(str::to_owned)
}

/// Where and how a run connects.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) endpoints: Vec<Endpoint>,
    pub(crate) sources: Sources,
    pub(crate) credentials: Credentials,
}

impl Target {
    /// Connection `index`: node `index % nodes`, source address by index. Returns after the
    /// `welcome` frame, and after the reply to joining `channel` when one is given.
    pub(crate) async fn open(
        &self,
        index: usize,
        channel: Option<&str>,
    ) -> Result<Client, WireError> {
        let endpoint = &self.endpoints[index % self.endpoints.len()];
        self.open_at(endpoint, index, channel).await
    }

    /// Like [`open`](Self::open), on a chosen node.
    pub(crate) async fn open_at(
        &self,
        endpoint: &Endpoint,
        index: usize,
        channel: Option<&str>,
    ) -> Result<Client, WireError> {
        let (client, _answer) = self.open_answered(endpoint, index, channel).await?;
        Ok(client)
    }

    /// Like [`open_at`](Self::open_at), with the text of the join's answer (`None` without a
    /// channel): on a channel that keeps history, it carries the channel's position.
    pub(crate) async fn open_answered(
        &self,
        endpoint: &Endpoint,
        index: usize,
        channel: Option<&str>,
    ) -> Result<(Client, Option<String>), WireError> {
        let headers = self.credentials.headers_for(index);
        let connecting = Client::connect(endpoint, self.sources.for_index(index), &headers);
        let mut client = tokio::time::timeout(STEP_TIMEOUT, connecting)
            .await
            .map_err(|_| WireError::Timeout("connecting"))??;
        let welcome = client.next_text(STEP_TIMEOUT).await?;
        if frame_type(&welcome).as_deref() != Some("welcome") {
            return Err(WireError::Refused(format!(
                "expected welcome, got {welcome}"
            )));
        }
        let Some(channel) = channel else {
            return Ok((client, None));
        };
        client
            .send_text(&format!(
                r#"{{"action":"join","channel":"{channel}","id":1}}"#
            ))
            .await?;
        let answer = client.next_text(STEP_TIMEOUT).await?;
        if frame_type(&answer).as_deref() != Some("reply") {
            return Err(WireError::Refused(format!("join {channel}: {answer}")));
        }
        Ok((client, Some(answer)))
    }

    /// Opens `count` connections, at most `concurrency` handshakes at a time; connection `i`
    /// joins `channel_of(i)`. Returns the connections in index order, or the first error.
    pub(crate) async fn open_many(
        &self,
        count: usize,
        concurrency: usize,
        channel_of: impl Fn(usize) -> Option<String>,
    ) -> Result<Vec<Client>, WireError> {
        let permits = Arc::new(Semaphore::new(concurrency.max(1)));
        let mut opening = Vec::with_capacity(count);
        for index in 0..count {
            let target = self.clone();
            let channel = channel_of(index);
            let permits = permits.clone();
            opening.push(tokio::spawn(async move {
                let _permit = permits.acquire_owned().await;
                target.open(index, channel.as_deref()).await
            }));
        }
        let mut clients = Vec::with_capacity(count);
        for handle in opening {
            match handle.await {
                Ok(result) => clients.push(result?),
                Err(err) => return Err(WireError::Closed(format!("task failed: {err}"))),
            }
        }
        Ok(clients)
    }
}
