//! RFC 6455 framing of what the server sends. Server frames are never masked, so a frame's
//! bytes are the same for every recipient: a publication is framed once and the same bytes go
//! to every member's socket. Plain byte layout only; the socket side lives in `connection`.

use bytes::Bytes;

/// Room kept in front of a payload for the largest header (2 + 8 bytes).
pub const HEADER_ROOM: usize = 10;

/// Frame opcodes the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

/// Ping and pong payloads are at most 125 bytes.
const MAX_CONTROL_PAYLOAD: usize = 125;

/// A buffer with [`HEADER_ROOM`] bytes reserved in front, for the payload to be written after.
pub fn buffer_with_header_room(capacity: usize) -> Vec<u8> {
    let mut buffer = Vec::with_capacity(HEADER_ROOM + capacity);
    buffer.resize(HEADER_ROOM, 0);
    buffer
}

/// Finishes a frame whose payload was written after the reserved room: the header is written
/// just in front of the payload and the frame starts there, with no copy of the payload.
pub fn finish(mut buffer: Vec<u8>, opcode: Opcode) -> Bytes {
    let length = buffer.len().saturating_sub(HEADER_ROOM);
    let (header, header_length) = header(opcode, length);
    let start = HEADER_ROOM - header_length;
    buffer[start..HEADER_ROOM].copy_from_slice(&header[..header_length]);
    Bytes::from(buffer).slice(start..)
}

/// A whole frame of `opcode` carrying `payload` (a copy; for small control frames).
pub fn frame(opcode: Opcode, payload: &[u8]) -> Bytes {
    let mut buffer = buffer_with_header_room(payload.len());
    buffer.extend_from_slice(payload);
    finish(buffer, opcode)
}

/// A ping or pong, its payload cut to the 125 bytes a control frame may carry.
pub fn control(opcode: Opcode, payload: &[u8]) -> Bytes {
    frame(opcode, &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)])
}

/// A close frame with `code` and `reason` (cut at a character boundary to fit).
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(super::MAX_CLOSE_REASON_BYTES);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    frame(Opcode::Close, &payload)
}

/// The header of a final, unmasked frame, and how many of the bytes are used.
fn header(opcode: Opcode, length: usize) -> ([u8; HEADER_ROOM], usize) {
    let (mut header, used) = length_header(length);
    header[0] = 0x80 | opcode as u8;
    (header, used)
}

/// A client's frame, masked with `mask` as RFC 6455 §5.3 asks of clients: for this protocol's
/// clients (the load tool, the tests). `opcode` is the raw opcode (0 for a continuation);
/// `fin` ends the message.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let (mut header, used) = length_header(payload.len());
    header[0] = if fin { 0x80 } else { 0 } | (opcode & 0x0F);
    header[1] |= 0x80;
    let mut frame = Vec::with_capacity(used + mask.len() + payload.len());
    frame.extend_from_slice(&header[..used]);
    frame.extend_from_slice(&mask);
    frame.extend(
        payload
            .iter()
            .zip(mask.iter().cycle())
            .map(|(byte, mask)| byte ^ mask),
    );
    frame
}

/// A header's length bytes (the second byte and the extended length), the first byte left 0.
fn length_header(length: usize) -> ([u8; HEADER_ROOM], usize) {
    let mut header = [0u8; HEADER_ROOM];
    match length {
        0..=125 => {
            header[1] = length as u8;
            (header, 2)
        }
        126..=0xFFFF => {
            header[1] = 126;
            header[2..4].copy_from_slice(&(length as u16).to_be_bytes());
            (header, 4)
        }
        _ => {
            header[1] = 127;
            header[2..10].copy_from_slice(&(length as u64).to_be_bytes());
            (header, 10)
        }
    }
}

/// The length of the header at the start of `frame` (one this module made).
pub fn header_length(frame: &[u8]) -> usize {
    match frame.get(1).map(|byte| byte & 0x7F) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_of_every_length_class() {
        for (length, header_bytes) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let payload = vec![b'a'; length];
            let frame = frame(Opcode::Text, &payload);
            assert_eq!(frame.len(), length + header_bytes, "length {length}");
            assert_eq!(frame[0], 0x81);
            assert_eq!(header_length(&frame), header_bytes);
            assert_eq!(&frame[header_bytes..], &payload[..]);
        }
        let binary = frame(Opcode::Binary, &[1, 2, 3]);
        assert_eq!(&binary[..], &[0x82, 3, 1, 2, 3]);
    }

    #[test]
    fn client_frames_are_masked_and_carry_their_fin_bit() {
        let frame = client_frame(false, 0x1, b"abcde", [1, 2, 3, 4]);
        assert_eq!(&frame[..6], &[0x01, 0x80 | 5, 1, 2, 3, 4]);
        assert_eq!(
            &frame[6..],
            &[b'a' ^ 1, b'b' ^ 2, b'c' ^ 3, b'd' ^ 4, b'e' ^ 1]
        );
        let long = client_frame(true, 0x2, &[0u8; 300], [0; 4]);
        assert_eq!(&long[..4], &[0x82, 0x80 | 126, 0x01, 0x2C]);
        assert_eq!(long.len(), 4 + 4 + 300);
    }

    #[test]
    fn close_frames_carry_the_code_and_a_reason_that_fits() {
        assert_eq!(
            &close(4010, "slow")[..],
            &[0x88, 6, 0x0F, 0xAA, b's', b'l', b'o', b'w']
        );
        let long = "é".repeat(100);
        let frame = close(1000, &long);
        assert!(frame.len() <= 2 + 125);
        assert!(
            std::str::from_utf8(&frame[4..]).is_ok(),
            "cut at a char boundary"
        );
        assert_eq!(control(Opcode::Ping, &[0u8; 300]).len(), 2 + 125);
    }
}
