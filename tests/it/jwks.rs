//! Identity providers' keys (`[auth.jwt] jwks_url`, `oidc_issuer`) against a real HTTPS provider
//! with a CA made in the test (`support::idp`): a rotation (new kid published, old retired)
//! taken without a restart, a provider that fails or hangs (the last good keys serve; a node
//! that never fetched answers 503), a flood of forged kids costing one fetch per
//! `min_refresh_interval`, an issuer serving another issuer's kid, and OpenID discovery.

use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

use crate::support::credentials::{AUDIENCE, ISSUER, KeyPair, claims};
use crate::support::idp::{IdentityProvider, Mode};
use crate::support::{Client, Refused, TestServer, WAIT};

fn config(provider: &IdentityProvider, jwt: &str) -> String {
    format!(
        "[auth]\nanonymous = false\n[auth.jwt]\naudience = [{AUDIENCE:?}]\njwks_ca_file = {:?}\n{jwt}\n",
        provider.ca_file.to_str().expect("path")
    )
}

fn set(keys: &[(&KeyPair, &str)]) -> Value {
    json!({"keys": keys.iter().map(|(key, kid)| key.jwk(kid)).collect::<Vec<_>>()})
}

async fn connect(server: &TestServer, token: &str) -> Result<Client, Refused> {
    let bearer = format!("Bearer {token}");
    Client::connect(&server.ws_url("/ws"), &[("Authorization", &bearer)]).await
}

async fn status(server: &TestServer, token: &str) -> u16 {
    match connect(server, token).await {
        Ok(_) => 101,
        Err(refused) => refused.status,
    }
}

/// Waits until a handshake with `token` answers `expected`.
async fn until_status(server: &TestServer, token: &str, expected: u16) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = status(server, token).await;
        if now == expected {
            return;
        }
        assert!(Instant::now() < deadline, "still {now}, not {expected}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn from(issuer: &str) -> Value {
    let mut token_claims = claims("7", 60);
    token_claims["iss"] = json!(issuer);
    token_claims
}

#[tokio::test]
async fn a_rotation_at_the_provider_is_taken_without_a_restart() {
    let provider = IdentityProvider::start().await;
    let (old, new) = (
        KeyPair::generate(Algorithm::ES256),
        KeyPair::generate(Algorithm::ES256),
    );
    provider.serve("/jwks", &set(&[(&old, "2026-old")]), Some("max-age=1"));
    let server = TestServer::start(&config(
        &provider,
        &format!(
            "issuer = {ISSUER:?}\njwks_url = \"{}/jwks\"\njwks_cache_min = \"1s\"\nmin_refresh_interval = \"1s\"\n",
            provider.url
        ),
    ))
    .await;
    let old_token = old.sign(&claims("7", 60), Some("2026-old"));
    until_status(&server, &old_token, 101).await;
    // The provider publishes the new key beside the old: a token naming it is verified at once
    // (its unknown kid refetches the set).
    provider.serve(
        "/jwks",
        &set(&[(&old, "2026-old"), (&new, "2026-new")]),
        Some("max-age=1"),
    );
    let new_token = new.sign(&claims("7", 60), Some("2026-new"));
    let mut client = connect(&server, &new_token).await.expect("the new key");
    assert_eq!(client.recv().await["user"], "7");
    // The old key is retired: once the set is fetched again (max-age), its tokens are refused.
    provider.serve("/jwks", &set(&[(&new, "2026-new")]), Some("max-age=1"));
    until_status(&server, &old_token, 401).await;
    assert_eq!(status(&server, &new_token).await, 101);
    let issuer = format!("issuer=\"{ISSUER}\"");
    let fetched =
        format!("switchboard_jwks_unknown_kid_refreshes_total{{{issuer},result=\"fetched\"}}");
    assert!(server.metric(&fetched).await >= Some(1.0));
    let ok = format!("switchboard_jwks_fetches_total{{{issuer},result=\"ok\"}}");
    assert!(server.metric(&ok).await >= Some(3.0));
    assert_eq!(
        server
            .metric(&format!("switchboard_jwks_keys{{{issuer}}}"))
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn a_provider_that_fails_or_hangs_leaves_the_last_keys_and_a_node_without_any_answers_503() {
    let provider = IdentityProvider::start().await;
    let key = KeyPair::generate(Algorithm::ES256);
    provider.serve("/jwks", &set(&[(&key, "k")]), Some("max-age=0"));
    let jwt = format!(
        "issuer = {ISSUER:?}\njwks_url = \"{}/jwks\"\njwks_cache_min = \"1s\"\njwks_timeout = \"500ms\"\n",
        provider.url
    );
    let fetched = TestServer::start(&config(&provider, &jwt)).await;
    let token = key.sign(&claims("7", 60), Some("k"));
    until_status(&fetched, &token, 101).await;

    for mode in [Mode::Failing, Mode::Slow(Duration::from_secs(3))] {
        provider.set_mode(mode);
        let failed =
            format!("switchboard_jwks_fetches_total{{issuer=\"{ISSUER}\",result=\"failed\"}}");
        let before = fetched.metric(&failed).await.unwrap_or(0.0);
        let deadline = Instant::now() + WAIT;
        while fetched.metric(&failed).await.unwrap_or(0.0) <= before {
            assert!(
                Instant::now() < deadline,
                "{mode:?}: no failed fetch counted"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            status(&fetched, &token).await,
            101,
            "{mode:?}: the last good keys serve"
        );
        // A node that starts now has no keys for the issuer: 503, not 401.
        let fresh = TestServer::start(&config(&provider, &jwt)).await;
        let refused = connect(&fresh, &token).await.err().expect("refused");
        assert_eq!(refused.status, 503, "{mode:?}");
        // Once the provider answers again, the fresh node fetches (with backoff) and accepts.
        provider.set_mode(Mode::Up);
        until_status(&fresh, &token, 101).await;
    }
}

#[tokio::test]
async fn a_flood_of_forged_kids_costs_the_provider_one_fetch_per_interval() {
    let provider = IdentityProvider::start().await;
    let key = KeyPair::generate(Algorithm::ES256);
    provider.serve("/jwks", &set(&[(&key, "real")]), Some("max-age=3600"));
    let server = TestServer::start(&config(
        &provider,
        &format!(
            "issuer = {ISSUER:?}\njwks_url = \"{}/jwks\"\nmin_refresh_interval = \"60s\"\n",
            provider.url
        ),
    ))
    .await;
    until_status(&server, &key.sign(&claims("7", 60), Some("real")), 101).await;
    let before = provider.requests("/jwks");
    let forger = KeyPair::generate(Algorithm::ES256);
    for attempt in 0..40 {
        let forged = forger.sign(&claims("7", 60), Some(&format!("forged-{attempt}")));
        assert_eq!(status(&server, &forged).await, 401);
    }
    let after = provider.requests("/jwks");
    assert_eq!(after - before, 1, "one refetch for forty unknown kids");
    let limited = format!(
        "switchboard_jwks_unknown_kid_refreshes_total{{issuer=\"{ISSUER}\",result=\"limited\"}}"
    );
    assert_eq!(server.metric(&limited).await, Some(39.0));
    assert_eq!(
        server
            .metric("switchboard_handshakes_refused_total{reason=\"unknown_key\"}")
            .await,
        Some(40.0)
    );
}

#[tokio::test]
async fn an_issuer_serving_another_issuers_kid_cannot_sign_for_it() {
    let provider = IdentityProvider::start().await;
    let (honest, attacker) = (
        KeyPair::generate(Algorithm::ES256),
        KeyPair::generate(Algorithm::ES256),
    );
    // The attacker runs issuer B and publishes a key under issuer A's kid.
    provider.serve("/a/jwks", &set(&[(&honest, "a-key")]), None);
    provider.serve("/b/jwks", &set(&[(&attacker, "a-key")]), None);
    let server = TestServer::start(&config(
        &provider,
        &format!(
            "[auth.jwt.jwks_url]\n\"https://a.test\" = \"{0}/a/jwks\"\n\"https://b.test\" = \"{0}/b/jwks\"\n",
            provider.url
        ),
    ))
    .await;
    until_status(
        &server,
        &honest.sign(&from("https://a.test"), Some("a-key")),
        101,
    )
    .await;
    // B's own tokens with its key are B's to sign.
    until_status(
        &server,
        &attacker.sign(&from("https://b.test"), Some("a-key")),
        101,
    )
    .await;
    // A token claiming issuer A, signed with B's key under the shared kid: A's key checks it.
    let forged = attacker.sign(&from("https://a.test"), Some("a-key"));
    assert_eq!(status(&server, &forged).await, 401);
    // An issuer nobody configured.
    assert_eq!(
        status(
            &server,
            &attacker.sign(&from("https://c.test"), Some("a-key"))
        )
        .await,
        401
    );
}

#[tokio::test]
async fn oidc_discovery_finds_the_jwks_and_checks_the_issuer() {
    let provider = IdentityProvider::start().await;
    let key = KeyPair::generate(Algorithm::EdDSA);
    let issuer = format!("{}/realms/main", provider.url);
    provider.serve(
        "/realms/main/.well-known/openid-configuration",
        &json!({"issuer": issuer, "jwks_uri": format!("{}/realms/main/certs", provider.url)}),
        None,
    );
    provider.serve("/realms/main/certs", &set(&[(&key, "ed")]), None);
    // A discovery document naming another issuer is not believed.
    let other = format!("{}/realms/other", provider.url);
    provider.serve(
        "/realms/other/.well-known/openid-configuration",
        &json!({"issuer": "https://elsewhere.test", "jwks_uri": format!("{}/realms/main/certs", provider.url)}),
        None,
    );
    let server = TestServer::start(&config(
        &provider,
        &format!("oidc_issuer = [{issuer:?}, {other:?}]\n"),
    ))
    .await;
    until_status(&server, &key.sign(&from(&issuer), Some("ed")), 101).await;
    assert_eq!(
        status(&server, &key.sign(&from(&other), Some("ed"))).await,
        503
    );
    assert!(provider.requests("/realms/main/.well-known/openid-configuration") >= 1);
}

#[test]
fn provider_settings_are_checked_by_key() {
    let cases = [
        (
            "jwks_url = \"http://idp.test/jwks\"\nissuer = \"i\"\n",
            "auth.jwt.jwks_url",
        ),
        (
            "jwks_url = \"https://idp.test/jwks\"\n",
            "auth.jwt.jwks_url",
        ),
        ("oidc_issuer = \"ftp://idp.test\"\n", "auth.jwt.oidc_issuer"),
        (
            "oidc_issuer = \"https://idp.test\"\njwks_ca_file = \"/nonexistent.pem\"\n",
            "auth.jwt.jwks_ca_file",
        ),
        (
            "oidc_issuer = \"https://idp.test\"\njwks_cache_min = \"2h\"\njwks_cache_max = \"1h\"\n",
            "auth.jwt.jwks_cache_min",
        ),
        (
            "oidc_issuer = \"https://a.test\"\nissuer = \"https://b.test\"\n",
            "auth.jwt.oidc_issuer",
        ),
    ];
    for (jwt, key) in cases {
        let path = crate::support::temp_file("jwks.toml", &format!("[auth.jwt]\n{jwt}"));
        let output = std::process::Command::new(crate::support::binary())
            .args(["check-config", "--config", path.to_str().expect("path")])
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{jwt} accepted");
        assert!(stderr.contains(key), "{jwt}: {stderr}");
    }
    // Plain HTTP when explicitly allowed.
    let path = crate::support::temp_file(
        "jwks.toml",
        "[auth.jwt]\njwks_url = \"http://idp.internal/jwks\"\nissuer = \"i\"\njwks_allow_http = true\n",
    );
    let output = std::process::Command::new(crate::support::binary())
        .args(["check-config", "--config", path.to_str().expect("path")])
        .output()
        .expect("run");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
