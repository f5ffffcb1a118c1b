//! The HTTP client the server uses to call the application's back ends (the introspection view,
//! action routes and hooks), built one way: redirects are not followed (a back end that
//! redirects is misconfigured, and a redirect could carry forwarded cookies elsewhere), and the
//! pool of idle keep-alive connections is bounded in number and age, so a burst of calls cannot
//! leave hundreds of descriptors open afterwards.
//!
//! What it is not: timeouts are the caller's (each knows its own), and nothing here retries.

use std::time::Duration;

/// Idle keep-alive connections kept per back-end host.
pub const MAX_IDLE_PER_HOST: usize = 16;
/// How long an idle keep-alive connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A client for back-end calls; `timeout` bounds each whole request when given.
pub fn client(timeout: Option<Duration>) -> Result<reqwest::Client, reqwest::Error> {
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
