//! Which address a handshake comes from, and which addresses count together.
//!
//! The peer is the client unless it is a trusted proxy: then the client is the right-most
//! address of `X-Forwarded-For` that is not itself a trusted proxy (each proxy appends the
//! address it saw, so everything left of that is the client's own claim and can be forged).
//! A header that does not parse, or one sent twice, leaves the proxy as the client: a limit on
//! a proxy is wrong but safe, a forged address would not be. IPv4-mapped IPv6 addresses are
//! IPv4; other IPv6 addresses count per prefix (`ipv6_prefix`, a /64 by default: one host
//! holds a whole /64, so per address would be no limit at all).

use std::net::{IpAddr, Ipv6Addr};

use crate::auth::Handshake;
use crate::auth::gateway::AddressBlock;

const FORWARDED_FOR: &str = "x-forwarded-for";

/// The client address of `handshake`, from its peer and, behind a trusted proxy, its
/// `X-Forwarded-For`. `None` without a peer address (a Unix socket).
pub fn client_address(handshake: &Handshake, proxies: &[AddressBlock]) -> Option<IpAddr> {
    let peer = handshake.peer?.to_canonical();
    let trusted = |address: IpAddr| proxies.iter().any(|block| block.contains(address));
    if !trusted(peer) {
        return Some(peer);
    }
    let mut values = handshake
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case(FORWARDED_FOR))
        .map(|(_, value)| value);
    let (Some(header), None) = (values.next(), values.next()) else {
        return Some(peer);
    };
    let mut hops = Vec::new();
    for hop in header.split(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(address) => hops.push(address.to_canonical()),
            Err(_) => return Some(peer),
        }
    }
    Some(
        hops.into_iter()
            .rev()
            .find(|address| !trusted(*address))
            .unwrap_or(peer),
    )
}

/// The key addresses are counted under: an IPv4 address, or an IPv6 address's prefix.
pub fn address_key(address: IpAddr, ipv6_prefix: u8) -> String {
    match address.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let bits = u32::from(ipv6_prefix.clamp(1, 128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            let network = Ipv6Addr::from(u128::from(v6) & mask);
            format!("{network}/{bits}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake(peer: &str, forwarded: &[&str]) -> Handshake {
        Handshake {
            peer: peer.parse().ok(),
            headers: forwarded
                .iter()
                .map(|value| ("X-Forwarded-For".to_owned(), (*value).to_owned()))
                .collect(),
            query: Vec::new(),
        }
    }

    fn proxies() -> Vec<AddressBlock> {
        vec![
            AddressBlock::parse("10.0.0.0/8").expect("block"),
            AddressBlock::parse("::1").expect("block"),
        ]
    }

    fn client(peer: &str, forwarded: &[&str]) -> Option<String> {
        client_address(&handshake(peer, forwarded), &proxies()).map(|a| a.to_string())
    }

    #[test]
    fn the_header_counts_only_from_a_trusted_proxy() {
        assert_eq!(
            client("203.0.113.9", &["198.51.100.1"]).as_deref(),
            Some("203.0.113.9")
        );
        assert_eq!(
            client("10.0.0.2", &["198.51.100.1"]).as_deref(),
            Some("198.51.100.1")
        );
        // The right-most untrusted hop: the left part is the client's own (forgeable) claim.
        assert_eq!(
            client("10.0.0.2", &["1.1.1.1, 198.51.100.1, 10.0.0.7"]).as_deref(),
            Some("198.51.100.1")
        );
        assert_eq!(
            client("::1", &["::ffff:192.0.2.1"]).as_deref(),
            Some("192.0.2.1")
        );
    }

    #[test]
    fn a_header_that_does_not_parse_or_comes_twice_leaves_the_proxy() {
        assert_eq!(
            client("10.0.0.2", &["not an address"]).as_deref(),
            Some("10.0.0.2")
        );
        assert_eq!(
            client("10.0.0.2", &["1.1.1.1", "2.2.2.2"]).as_deref(),
            Some("10.0.0.2")
        );
        assert_eq!(
            client("10.0.0.2", &["10.0.0.3"]).as_deref(),
            Some("10.0.0.2"),
            "all proxies"
        );
        assert_eq!(client("10.0.0.2", &[]).as_deref(), Some("10.0.0.2"));
        assert_eq!(client_address(&handshake("", &[]), &proxies()), None);
    }

    #[test]
    fn ipv6_addresses_count_per_prefix_and_mapped_ipv4_as_ipv4() {
        let key = |text: &str, prefix| address_key(text.parse().expect("address"), prefix);
        assert_eq!(key("2001:db8:1:2:aaaa::1", 64), "2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2:bbbb::9", 64), "2001:db8:1:2::/64");
        assert_ne!(key("2001:db8:1:3::1", 64), key("2001:db8:1:2::1", 64));
        assert_eq!(key("2001:db8::1", 128), "2001:db8::1/128");
        assert_eq!(key("::ffff:192.0.2.1", 64), "192.0.2.1");
        assert_eq!(key("192.0.2.1", 64), "192.0.2.1");
        assert_eq!(key("2001:db8::1", 0), "::/1", "clamped to /1, no panic");
    }
}
