//! The `[limits]` section: connections per user and per client address across the cluster, and
//! handshakes per second per address on each node.

use serde::{Deserialize, Serialize};

use crate::auth::gateway::AddressBlock;
use crate::config::KeyError;

/// The `[limits]` section. Every limit is off at 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Open sockets one user may hold across the cluster (0: no limit).
    pub max_connections_per_user: usize,
    /// Open sockets one client address (IPv6: one prefix) may hold across the cluster.
    pub max_connections_per_ip: usize,
    /// IPv6 addresses count together per prefix of this length (a host gets a /64).
    pub ipv6_prefix: u8,
    /// Handshakes per second one address may start on one node (0: no limit)…
    pub handshake_rate_per_ip: u32,
    /// …with bursts up to this many.
    pub handshake_burst_per_ip: u32,
    /// Proxies (addresses or CIDR blocks) whose `X-Forwarded-For` names the client; from any
    /// other peer the header is ignored and the peer is the client.
    pub trusted_proxies: Vec<String>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections_per_user: 0,
            max_connections_per_ip: 0,
            ipv6_prefix: 64,
            handshake_rate_per_ip: 0,
            handshake_burst_per_ip: 20,
            trusted_proxies: Vec::new(),
        }
    }
}

impl LimitsConfig {
    /// Whether any limit is on.
    pub fn any(&self) -> bool {
        self.max_connections_per_user > 0
            || self.max_connections_per_ip > 0
            || self.handshake_rate_per_ip > 0
    }

    /// The trusted proxies, parsed.
    pub(crate) fn proxies(&self) -> Result<Vec<AddressBlock>, KeyError> {
        self.trusted_proxies
            .iter()
            .map(|text| AddressBlock::parse(text))
            .collect::<Result<_, _>>()
            .map_err(|message| KeyError::new("limits.trusted_proxies", message))
    }

    /// Problems with the section, by key.
    pub fn problems(&self) -> Vec<KeyError> {
        let mut problems = Vec::new();
        if !(1..=128).contains(&self.ipv6_prefix) {
            problems.push(KeyError::new("limits.ipv6_prefix", "must be 1 to 128"));
        }
        if self.handshake_rate_per_ip > 0 && self.handshake_burst_per_ip == 0 {
            problems.push(KeyError::new(
                "limits.handshake_burst_per_ip",
                "must be at least 1 when handshake_rate_per_ip is set",
            ));
        }
        if let Err(problem) = self.proxies() {
            problems.push(problem);
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_problems_name_their_key() {
        assert!(!LimitsConfig::default().any());
        assert!(LimitsConfig::default().problems().is_empty());
        let bad = LimitsConfig {
            ipv6_prefix: 0,
            handshake_rate_per_ip: 5,
            handshake_burst_per_ip: 0,
            trusted_proxies: vec!["proxy.local".into()],
            ..LimitsConfig::default()
        };
        let keys: Vec<String> = bad.problems().into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "limits.ipv6_prefix",
                "limits.handshake_burst_per_ip",
                "limits.trusted_proxies"
            ]
        );
    }
}
