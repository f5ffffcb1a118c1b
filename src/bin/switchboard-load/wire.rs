//! A minimal WebSocket client, just what a load generator needs and nothing that costs per
//! frame: the HTTP upgrade written by hand, frames parsed in place from one growing buffer, text
//! frames sent masked (RFC 6455 §5.3), pings answered. A general client (tungstenite) copies each
//! message into its own allocation; at a million frames a second on one core that copy is most
//! of the generator's time, so this one hands out borrowed payloads instead.
//!
//! Connections bind their source address first, so a run can spread its sockets over
//! 127.0.0.x and never run out of ephemeral ports on one address.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Why a connection failed or ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    #[error("invalid url {0:?}: expected ws://HOST:PORT/PATH")]
    Url(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("handshake refused: {0}")]
    Refused(String),
    #[error("the server closed the connection ({0})")]
    Closed(String),
    #[error("protocol: {0}")]
    Protocol(&'static str),
    #[error("timed out {0}")]
    Timeout(&'static str),
}

/// Where to connect: `ws://HOST:PORT/PATH?QUERY`, parsed once.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub(crate) address: SocketAddr,
    host: String,
    target: String,
}

impl Endpoint {
    pub(crate) fn parse(url: &str) -> Result<Self, WireError> {
        let invalid = || WireError::Url(url.to_owned());
        let rest = url.strip_prefix("ws://").ok_or_else(invalid)?;
        let (host, target) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, "/"),
        };
        let address: SocketAddr = host.parse().map_err(|_| invalid())?;
        Ok(Self {
            address,
            host: host.to_owned(),
            target: target.to_owned(),
        })
    }
}

/// Source addresses 127.0.0.1 … 127.0.0.N, handed out round-robin by connection index.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sources(pub u8);

impl Sources {
    pub(crate) fn for_index(self, index: usize) -> Ipv4Addr {
        Ipv4Addr::new(127, 0, 0, 1 + (index % usize::from(self.0.max(1))) as u8)
    }
}

/// One frame, borrowed from the client's buffer until the next read.
#[derive(Debug)]
pub(crate) enum Frame<'a> {
    Text(&'a [u8]),
    /// A binary frame (MessagePack); the generator speaks JSON and only skips these.
    Binary,
}

/// An open WebSocket connection.
pub(crate) struct Client {
    stream: TcpStream,
    buffer: Vec<u8>,
    /// Start of the unread bytes in `buffer`.
    start: usize,
    /// Pings to answer at the next `fill`.
    pings: Vec<Vec<u8>>,
}

const READ_CHUNK: usize = 16 * 1024;

impl Client {
    /// Connects from `source`, upgrades with `headers` added, and returns once the server
    /// answered 101.
    pub(crate) async fn connect(
        endpoint: &Endpoint,
        source: Ipv4Addr,
        headers: &[(String, String)],
    ) -> Result<Self, WireError> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))?;
        let mut stream = socket.connect(endpoint.address).await?;
        stream.set_nodelay(true)?;
        let key =
            base64::engine::general_purpose::STANDARD.encode(fastrand::u128(..).to_le_bytes());
        let mut request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n",
            endpoint.target, endpoint.host
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await?;

        let mut buffer = Vec::with_capacity(1024);
        let head_end = loop {
            if let Some(end) = find(&buffer, b"\r\n\r\n") {
                break end + 4;
            }
            if buffer.len() > 16 * 1024 {
                return Err(WireError::Protocol("response head too long"));
            }
            if read_more(&mut stream, &mut buffer).await? == 0 {
                return Err(WireError::Closed("during the handshake".into()));
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        if !head.starts_with("HTTP/1.1 101") {
            // The refusal's JSON body may still be on its way; a short wait collects it.
            let _ = tokio::time::timeout(
                Duration::from_millis(200),
                read_more(&mut stream, &mut buffer),
            )
            .await;
            let status = head.lines().next().unwrap_or_default().to_owned();
            let body = String::from_utf8_lossy(&buffer[head_end..]).into_owned();
            return Err(WireError::Refused(
                format!("{status} {body}").trim().to_owned(),
            ));
        }
        Ok(Self {
            stream,
            buffer,
            start: head_end,
            pings: Vec::new(),
        })
    }

    /// The next data frame already in the buffer, without reading: `None` when more bytes are
    /// needed ([`fill`](Self::fill)). Pings are queued for an answer; a close frame is `Closed`.
    pub(crate) fn buffered(&mut self) -> Result<Option<Frame<'_>>, WireError> {
        Ok(self.next_buffered()?.map(|(opcode, payload)| {
            let bytes = &self.buffer[payload];
            if opcode == 0x1 {
                Frame::Text(bytes)
            } else {
                Frame::Binary
            }
        }))
    }

    /// Answers queued pings, then reads more bytes from the socket. `Closed` at its end.
    pub(crate) async fn fill(&mut self) -> Result<(), WireError> {
        for ping in std::mem::take(&mut self.pings) {
            self.send_frame(0xA, &ping).await?;
        }
        self.compact();
        if read_more(&mut self.stream, &mut self.buffer).await? == 0 {
            return Err(WireError::Closed("socket closed".into()));
        }
        Ok(())
    }

    /// The next data frame, reading as needed.
    pub(crate) async fn next(&mut self) -> Result<Frame<'_>, WireError> {
        loop {
            if let Some((opcode, payload)) = self.next_buffered()? {
                let bytes = &self.buffer[payload];
                return Ok(if opcode == 0x1 {
                    Frame::Text(bytes)
                } else {
                    Frame::Binary
                });
            }
            self.fill().await?;
        }
    }

    /// The opcode and payload range of the next buffered data frame, consuming it (its bytes
    /// stay until the next `fill`).
    fn next_buffered(&mut self) -> Result<Option<(u8, std::ops::Range<usize>)>, WireError> {
        loop {
            let Some(parsed) = parse(&self.buffer[self.start..])? else {
                return Ok(None);
            };
            let payload = self.start + parsed.header..self.start + parsed.total;
            self.start += parsed.total;
            match parsed.opcode {
                0x1 | 0x2 => return Ok(Some((parsed.opcode, payload))),
                0x8 => {
                    let bytes = &self.buffer[payload];
                    let code = bytes
                        .get(..2)
                        .map_or(1005, |code| u16::from_be_bytes([code[0], code[1]]));
                    let reason = String::from_utf8_lossy(bytes.get(2..).unwrap_or_default());
                    return Err(WireError::Closed(format!("{code} {reason}")));
                }
                0x9 => self.pings.push(self.buffer[payload].to_vec()),
                0xA => {}
                _ => return Err(WireError::Protocol("unexpected opcode")),
            }
        }
    }

    /// The next text frame within `limit`, skipping nothing: a binary frame is an error.
    pub(crate) async fn next_text(&mut self, limit: Duration) -> Result<String, WireError> {
        match tokio::time::timeout(limit, self.next()).await {
            Err(_) => Err(WireError::Timeout("waiting for a frame")),
            Ok(Err(err)) => Err(err),
            Ok(Ok(Frame::Text(text))) => Ok(String::from_utf8_lossy(text).into_owned()),
            Ok(Ok(Frame::Binary)) => Err(WireError::Protocol("binary frame on a JSON socket")),
        }
    }

    /// Sends one text frame.
    pub(crate) async fn send_text(&mut self, text: &str) -> Result<(), WireError> {
        self.send_frame(0x1, text.as_bytes()).await
    }

    /// Sends a close frame (1000) and shuts the write side.
    pub(crate) async fn close(mut self) {
        let _ = self.send_frame(0x8, &1000u16.to_be_bytes()).await;
        let _ = self.stream.shutdown().await;
    }

    /// Drops the read buffer's capacity: an idle connection holds no more than it must.
    pub(crate) fn shrink(&mut self) {
        self.compact();
        self.buffer.shrink_to_fit();
    }

    async fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> Result<(), WireError> {
        let mask = fastrand::u32(..).to_be_bytes();
        let frame = switchboard::protocol::websocket::client_frame(true, opcode, payload, mask);
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
    }
}

struct Parsed {
    opcode: u8,
    header: usize,
    total: usize,
}

/// Parses the frame at the start of `bytes`, if it is all there. Server frames are unmasked.
fn parse(bytes: &[u8]) -> Result<Option<Parsed>, WireError> {
    let [first, second, ..] = *bytes else {
        return Ok(None);
    };
    if first & 0x80 == 0 {
        return Err(WireError::Protocol("fragmented frames are not expected"));
    }
    if second & 0x80 != 0 {
        return Err(WireError::Protocol("the server masked a frame"));
    }
    let (header, length): (usize, usize) = match second & 0x7F {
        126 => match bytes.get(2..4) {
            Some(length) => (4, usize::from(u16::from_be_bytes([length[0], length[1]]))),
            None => return Ok(None),
        },
        127 => match bytes.get(2..10) {
            Some(length) => {
                let mut eight = [0u8; 8];
                eight.copy_from_slice(length);
                (
                    10,
                    usize::try_from(u64::from_be_bytes(eight)).unwrap_or(usize::MAX),
                )
            }
            None => return Ok(None),
        },
        short => (2, usize::from(short)),
    };
    let total = header.saturating_add(length);
    Ok((bytes.len() >= total).then_some(Parsed {
        opcode: first & 0x0F,
        header,
        total,
    }))
}

async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> std::io::Result<usize> {
    buffer.reserve(READ_CHUNK);
    stream.read_buf(buffer).await
}

/// The position of `needle` in `haystack`.
pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_parsed_only_when_complete() {
        assert!(parse(&[0x81]).expect("ok").is_none());
        assert!(parse(&[0x81, 3, b'a']).expect("ok").is_none());
        let parsed = parse(&[0x81, 3, b'a', b'b', b'c', 0x81])
            .expect("ok")
            .expect("frame");
        assert_eq!((parsed.opcode, parsed.header, parsed.total), (1, 2, 5));
        let mut long = vec![0x82, 126, 0x01, 0x00];
        long.extend(std::iter::repeat_n(0u8, 256));
        let parsed = parse(&long).expect("ok").expect("frame");
        assert_eq!((parsed.opcode, parsed.header, parsed.total), (2, 4, 260));
        assert!(
            parse(&[0x81, 0x83, 0, 0, 0, 0]).is_err(),
            "masked server frame"
        );
    }

    #[test]
    fn endpoints_and_sources() {
        let endpoint = Endpoint::parse("ws://127.0.0.1:8080/ws").expect("url");
        assert_eq!(endpoint.address.port(), 8080);
        assert_eq!(endpoint.target, "/ws");
        assert!(Endpoint::parse("http://127.0.0.1:8080/ws").is_err());
        assert_eq!(Sources(4).for_index(5), Ipv4Addr::new(127, 0, 0, 2));
    }
}
