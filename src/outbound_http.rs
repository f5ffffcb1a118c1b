//! The HTTP client the server uses to call the application's back ends (the introspection view,
//! action routes and hooks), built one way: redirects are not followed (a back end that
//! redirects is misconfigured, and a redirect could carry forwarded cookies elsewhere), and the
//! pool of idle keep-alive connections is bounded in number and age, so a burst of calls cannot
//! leave hundreds of descriptors open afterwards.
//!
//! Answers are read with a size bound ([`body_within`]): a back end's answer is bytes from
//! outside like any other, and one that streams without end must not grow the node.
//!
//! What it is not: timeouts are the caller's (each knows its own), and nothing here retries.

use std::time::Duration;

/// Idle keep-alive connections kept per back-end host.
pub(crate) const MAX_IDLE_PER_HOST: usize = 16;
/// How long an idle keep-alive connection is kept.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an answer's body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the answer could not be read: {0}")]
    Read(String),
}

/// Reads an answer's body, refusing one longer than `limit` bytes (by its `Content-Length`, or
/// as it arrives).
pub(crate) async fn body_within(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(BodyError::TooLarge(limit));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| BodyError::Read(err.without_url().to_string()))?
    {
        if body.len().saturating_add(chunk.len()) > limit {
            return Err(BodyError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A client for back-end calls; `timeout` bounds each whole request when given.
pub(crate) fn client(timeout: Option<Duration>) -> Result<reqwest::Client, reqwest::Error> {
    let builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
        .pool_idle_timeout(IDLE_TIMEOUT);
    match timeout {
        Some(timeout) => builder.timeout(timeout),
        None => builder,
    }
    .build()
}
