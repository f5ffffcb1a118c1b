//! A transport-neutral view of a WebSocket handshake: what authenticators may look at.

use std::net::IpAddr;

/// The parts of an HTTP upgrade request that identify a client. Header names are lower-case.
#[derive(Debug, Clone, Default)]
pub struct Handshake {
    pub peer: Option<IpAddr>,
    pub headers: Vec<(String, String)>,
    pub query: Vec<(String, String)>,
}

impl Handshake {
    /// The first value of a header (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The first value of a query parameter.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// Every value of a repeatable query parameter, in order.
    pub fn query_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.query
            .iter()
            .filter(move |(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// A cookie's value, from every `Cookie` header.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .filter(|(header, _)| header.eq_ignore_ascii_case("cookie"))
            .flat_map(|(_, value)| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value)
    }

    /// The bearer token of the `Authorization` header, if any.
    pub fn bearer_token(&self) -> Option<&str> {
        let value = self.header("authorization")?;
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|token| !token.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake() -> Handshake {
        Handshake {
            peer: None,
            headers: vec![
                ("authorization".into(), "Bearer abc.def".into()),
                ("cookie".into(), "a=1; sessionid=xyz".into()),
                ("cookie".into(), "b=2".into()),
            ],
            query: vec![
                ("channel".into(), "a".into()),
                ("channel".into(), "b".into()),
                ("token".into(), "t".into()),
            ],
        }
    }

    #[test]
    fn reads_headers_cookies_and_query() {
        let handshake = handshake();
        assert_eq!(handshake.bearer_token(), Some("abc.def"));
        assert_eq!(handshake.cookie("sessionid"), Some("xyz"));
        assert_eq!(handshake.cookie("b"), Some("2"));
        assert_eq!(handshake.cookie("missing"), None);
        assert_eq!(handshake.query("token"), Some("t"));
        assert_eq!(
            handshake.query_all("channel").collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(handshake.header("AUTHORIZATION"), Some("Bearer abc.def"));
    }
}
