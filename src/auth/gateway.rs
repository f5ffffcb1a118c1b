//! The `gateway` authenticator: identity headers set by a trusted reverse proxy (APISIX's
//! `openid-connect` plugin, oauth2-proxy, an nginx `auth_request`).
//!
//! Two forms, either or both: a userinfo header, base64 of a JSON object whose `user_field` is the
//! user id (APISIX's `X-Userinfo`), and a plain header carrying the user id (`user_header`, for
//! nginx `auth_request` or oauth2-proxy). Only the headers the operator configured are read: a
//! node given only `user_header` does not read `X-Userinfo`, which a client could forge and a
//! proxy that does not set it would pass through. The headers are believed only when the TCP
//! peer is one of `trusted_proxies`: anyone can send them, so from any other address they are
//! ignored (the handshake goes on to the next authenticator) and counted in
//! `switchboard_gateway_untrusted_total`. From a trusted proxy, a header that appears twice (a
//! proxy appending its value to a forged one) or two configured headers naming different users
//! refuse the handshake.

use crate::config::KeyError;
use std::net::IpAddr;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::chain::{AuthError, AuthFuture, Authenticator, RefusalReason};
use super::identity::id_of;
use super::{Handshake, Identity};
use crate::metrics as names;

/// The `[auth.gateway]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Addresses (`10.0.0.5`) or CIDR blocks (`10.0.0.0/8`, `fd00::/8`) of the proxies whose
    /// headers are believed.
    pub trusted_proxies: Vec<String>,
    /// The base64 JSON userinfo header; `""`: not read. Unset: `x-userinfo`, unless
    /// `user_header` is set (then only that one is read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userinfo_header: Option<String>,
    /// The userinfo field holding the user id.
    pub user_field: String,
    /// The userinfo field holding the session id (OpenID Connect's `sid`).
    pub session_field: String,
    /// A header carrying the user id as plain text; empty: not read.
    pub user_header: String,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            trusted_proxies: Vec::new(),
            userinfo_header: None,
            user_field: "sub".to_owned(),
            session_field: "sid".to_owned(),
            user_header: String::new(),
        }
    }
}

/// An address block: an address and how many leading bits must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressBlock {
    network: IpAddr,
    prefix: u8,
}

impl AddressBlock {
    /// Parses `10.0.0.0/8`, `::1/128`, or a bare address (a block of one).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text.trim(), None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))?;
        let width = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|prefix| *prefix <= width)
                .ok_or_else(|| format!("{text:?} has an invalid prefix length"))?,
            None => width,
        };
        Ok(Self { network, prefix })
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        // A v4 peer on a dual-stack socket arrives as ::ffff:a.b.c.d.
        match (self.network, address.to_canonical()) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(network) & mask == u32::from(address) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(network) & mask == u128::from(address) & mask
            }
            _ => false,
        }
    }
}

/// The userinfo header read when `userinfo_header` is unset and `user_header` is not given.
pub const DEFAULT_USERINFO_HEADER: &str = "x-userinfo";

impl GatewayConfig {
    /// The userinfo header actually read (`""`: none).
    pub fn effective_userinfo_header(&self) -> &str {
        match (&self.userinfo_header, self.user_header.is_empty()) {
            (Some(header), _) => header,
            (None, true) => DEFAULT_USERINFO_HEADER,
            (None, false) => "",
        }
    }
}

pub struct GatewayAuthenticator {
    trusted: Vec<AddressBlock>,
    /// The userinfo header read (lower case; empty: none).
    userinfo_header: String,
    config: GatewayConfig,
}

impl GatewayAuthenticator {
    pub fn from_config(config: &GatewayConfig) -> Result<Self, KeyError> {
        let key = |name: &str| format!("auth.gateway.{name}");
        if config.trusted_proxies.is_empty() {
            return Err(KeyError::new(
                key("trusted_proxies"),
                "must list the proxies whose headers are believed".to_owned(),
            ));
        }
        if config.effective_userinfo_header().is_empty() && config.user_header.is_empty() {
            return Err(KeyError::new(
                key("userinfo_header"),
                "set userinfo_header and/or user_header".to_owned(),
            ));
        }
        let trusted = config
            .trusted_proxies
            .iter()
            .map(|text| AddressBlock::parse(text))
            .collect::<Result<_, _>>()
            .map_err(|message| KeyError::new(key("trusted_proxies"), message))?;
        Ok(Self {
            trusted,
            userinfo_header: config.effective_userinfo_header().to_ascii_lowercase(),
            config: config.clone(),
        })
    }

    /// A configured header's value (none when `name` is empty); `Err` when it appears twice.
    fn header<'a>(
        &self,
        handshake: &'a Handshake,
        name: &str,
    ) -> Result<Option<&'a str>, AuthError> {
        if name.is_empty() {
            return Ok(None);
        }
        handshake.single_header(name).map_err(|_| {
            AuthError::refused(
                RefusalReason::InvalidGatewayHeader,
                format!("{name} appears more than once"),
            )
        })
    }

    /// Whether `handshake` carries any configured header (even twice).
    fn carries_headers(&self, handshake: &Handshake) -> bool {
        [&self.userinfo_header, &self.config.user_header]
            .into_iter()
            .filter(|name| !name.is_empty())
            .any(|name| handshake.header(name).is_some())
    }

    fn identity_in_userinfo(&self, encoded: &str) -> Result<Identity, AuthError> {
        let invalid =
            |detail: String| AuthError::refused(RefusalReason::InvalidGatewayHeader, detail);
        let bytes = decode_base64(encoded.trim())
            .ok_or_else(|| invalid(format!("{} is not base64", self.userinfo_header)))?;
        let userinfo: Value = serde_json::from_slice(&bytes).map_err(|err| {
            invalid(format!(
                "{} is not base64 JSON: {err}",
                self.userinfo_header
            ))
        })?;
        let user = userinfo
            .get(&self.config.user_field)
            .and_then(id_of)
            .ok_or_else(|| {
                invalid(format!(
                    "{} has no {:?} field",
                    self.userinfo_header, self.config.user_field
                ))
            })?;
        Ok(Identity {
            user: Some(user),
            session: userinfo.get(&self.config.session_field).and_then(id_of),
            authenticator: "gateway",
            ..Identity::default()
        })
    }
}

impl Authenticator for GatewayAuthenticator {
    fn name(&self) -> &'static str {
        "gateway"
    }

    /// Gateways (APISIX's `openid-connect`, oauth2-proxy) identify a browser by the session
    /// cookie it sends them, which a page on any site makes it send.
    fn uses_ambient_credentials(&self) -> bool {
        true
    }

    fn authenticate<'a>(&'a self, handshake: &'a Handshake) -> AuthFuture<'a, Option<Identity>> {
        Box::pin(async move {
            if !self.carries_headers(handshake) {
                return Ok(None);
            }
            let trusted = handshake
                .peer
                .is_some_and(|peer| self.trusted.iter().any(|block| block.contains(peer)));
            if !trusted {
                metrics::counter!(names::GATEWAY_UNTRUSTED).increment(1);
                tracing::debug!(peer = ?handshake.peer, "gateway headers from an untrusted peer ignored");
                return Ok(None);
            }
            let from_userinfo = match self.header(handshake, &self.userinfo_header)? {
                Some(encoded) => Some(self.identity_in_userinfo(encoded)?),
                None => None,
            };
            let from_header = match self.header(handshake, &self.config.user_header)? {
                Some(user) => match user.trim() {
                    "" => {
                        return Err(AuthError::refused(
                            RefusalReason::InvalidGatewayHeader,
                            format!("{} is empty", self.config.user_header),
                        ));
                    }
                    user => Some(user.to_owned()),
                },
                None => None,
            };
            match (from_userinfo, from_header) {
                (Some(identity), Some(user)) if identity.user.as_deref() != Some(user.as_str()) => {
                    Err(AuthError::refused(
                        RefusalReason::InvalidGatewayHeader,
                        format!(
                            "{} and {} name different users",
                            self.userinfo_header, self.config.user_header
                        ),
                    ))
                }
                (Some(identity), _) => Ok(Some(identity)),
                (None, Some(user)) => Ok(Some(Identity {
                    user: Some(user),
                    authenticator: "gateway",
                    ..Identity::default()
                })),
                (None, None) => Ok(None),
            }
        })
    }
}

/// Standard or URL-safe base64, with or without padding (proxies differ).
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_blocks_match_by_prefix() {
        let block = AddressBlock::parse("10.1.0.0/16").expect("block");
        assert!(block.contains("10.1.200.3".parse().expect("ip")));
        assert!(!block.contains("10.2.0.1".parse().expect("ip")));
        assert!(block.contains("::ffff:10.1.0.9".parse().expect("ip")));
        let one = AddressBlock::parse("127.0.0.1").expect("address");
        assert!(one.contains("127.0.0.1".parse().expect("ip")));
        assert!(!one.contains("127.0.0.2".parse().expect("ip")));
        assert!(
            AddressBlock::parse("::/0")
                .expect("all v6")
                .contains("fd00::1".parse().expect("ip"))
        );
        assert!(
            AddressBlock::parse("0.0.0.0/0")
                .expect("all v4")
                .contains("8.8.8.8".parse().expect("ip"))
        );
        assert!(AddressBlock::parse("10.0.0.0/33").is_err());
        assert!(AddressBlock::parse("proxy.local").is_err());
    }

    #[test]
    fn userinfo_in_any_base64_flavour_is_read() {
        let gateway = GatewayAuthenticator::from_config(&GatewayConfig {
            trusted_proxies: vec!["127.0.0.1".into()],
            ..GatewayConfig::default()
        })
        .expect("config");
        let json = br#"{"sub":"u-7","sid":"s-9","name":"\u00e9?>"}"#;
        for engine in [
            base64::engine::general_purpose::STANDARD,
            base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ] {
            let identity = gateway
                .identity_in_userinfo(&engine.encode(json))
                .expect("read");
            assert_eq!(identity.user.as_deref(), Some("u-7"));
            assert_eq!(identity.session.as_deref(), Some("s-9"));
        }
        assert!(gateway.identity_in_userinfo("%%%").is_err());
    }
}
