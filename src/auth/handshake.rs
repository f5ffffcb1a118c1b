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

    /// The value of a header that must appear at most once: `Err` when it appears twice or more
    /// (a credential header sent twice is ambiguous, and typical of a proxy that appended its own
    /// value to a forged one instead of replacing it).
    pub fn single_header(&self, name: &str) -> Result<Option<&str>, Duplicate> {
        single(
            self.headers
                .iter()
                .filter(|(header, _)| header.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.as_str()),
        )
    }

    /// The value of a query parameter that must appear at most once.
    pub fn single_query(&self, name: &str) -> Result<Option<&str>, Duplicate> {
        single(
            self.query
                .iter()
                .filter(|(key, _)| key == name)
                .map(|(_, value)| value.as_str()),
        )
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

    /// The bearer token of the `Authorization` header, if any; `Err` when the header is sent
    /// twice.
    pub fn bearer_token(&self) -> Result<Option<&str>, Duplicate> {
        let Some(value) = self.single_header("authorization")? else {
            return Ok(None);
        };
        Ok(value.split_once(' ').and_then(|(scheme, token)| {
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim())
                .filter(|token| !token.is_empty())
        }))
    }
}

/// A header or query parameter that must appear once appeared more often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duplicate;

fn single<'a>(mut values: impl Iterator<Item = &'a str>) -> Result<Option<&'a str>, Duplicate> {
    let first = values.next();
    match values.next() {
        Some(_) => Err(Duplicate),
        None => Ok(first),
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
        assert_eq!(handshake.bearer_token(), Ok(Some("abc.def")));
        assert_eq!(handshake.cookie("sessionid"), Some("xyz"));
        assert_eq!(handshake.cookie("b"), Some("2"));
        assert_eq!(handshake.cookie("missing"), None);
        assert_eq!(handshake.query("token"), Some("t"));
        assert_eq!(
            handshake.query_all("channel").collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(handshake.header("AUTHORIZATION"), Some("Bearer abc.def"));
        assert_eq!(handshake.single_header("cookie"), Err(Duplicate));
        assert_eq!(handshake.single_query("channel"), Err(Duplicate));
        assert_eq!(handshake.single_query("token"), Ok(Some("t")));
        assert_eq!(handshake.single_header("x-missing"), Ok(None));
    }
}
