//! The wire contract, and nothing else: the frames clients and servers exchange, channel names,
//! close codes and reasons, error codes, refusal codes, the broker envelope, control operations,
//! the two encodings (JSON, MessagePack) and their nesting limit, the WebSocket framing of what
//! the server sends (`websocket`) and of what clients send (`client_messages`). Everything a client or a back end can be told is named
//! here once: [`CloseReason`], [`ErrorCode`], [`RefusalCode`].
//!
//! This module does no IO and knows nothing of actors, sockets or Redis (of actix it uses only
//! actix-http's WebSocket frame decoder, a pure function of bytes). Everything here is pure
//! data and pure functions, so it is tested by unit tests and benchmarked without a server.
//! `docs/protocol.md` is the prose version of this module.

pub mod channel;
pub mod client_messages;
pub mod close;
pub mod codec;
pub mod control;
pub mod depth;
pub mod envelope;
pub mod error_code;
pub mod frame;
pub mod position;
pub mod refusal;
pub mod websocket;

pub use channel::{ChannelName, InvalidChannel};
pub use close::{CloseCode, CloseReason, MAX_CLOSE_REASON_BYTES};
pub use codec::{DecodeError, EncodeError, Encoding, OutboundFrame};
pub use control::{ControlOp, ControlTarget};
pub use envelope::{Envelope, PublicationKind};
pub use error_code::{BROKER_UNAVAILABLE_REASON, ErrorCode};
pub use frame::{ClientFrame, ClientRequest, ServerFrame};
pub use position::Position;
pub use refusal::RefusalCode;
