//! The relay's own WebSocket framing (RFC 6455), on both legs: a
//! [`WsSocket`] is a `Stream` of tungstenite `Message`s and a `Sink` of
//! them, so the pump drives it exactly as it drove tungstenite's
//! `WebSocketStream`, with the same errors.
//!
//! **Why our own.** tungstenite allocates a read buffer per socket when the
//! socket is built, and keeps it, and keeps its write buffer at the largest
//! frame written: ~5 KiB on every idle relayed connection, with nothing in
//! flight (benches/README.md, "Memory"). Here an idle socket holds no
//! buffer at all:
//! - a read goes first into a buffer on the poll function's stack; only
//!   bytes that arrived go to the heap, and a frame that arrived whole is
//!   handed on as those bytes (no second copy);
//! - a frame that is still partial keeps a heap buffer that grows only as
//!   its bytes arrive (at most [`MAX_READ`] per read, doubling at most to
//!   twice what arrived and never past the frame's end), never to the
//!   length the peer announced; reads stop at the frame's end, so no byte
//!   of the next frame keeps a large buffer alive;
//! - a written frame's buffer is freed once the peer's socket took it.
//!
//! **What is checked**, before a payload byte is read where the header
//! allows: reserved bits (no extension is negotiated), masking by role
//! (a browser must mask, AppSync must not), known opcodes, control frames
//! final and ≤ 125 bytes, continuation order, the frame and message limits
//! of [`Limits`]; then UTF-8 for text and close reasons, and close codes.
//! Pings are answered (the latest one, if the peer sends faster than it
//! reads); a close is answered with the same code. Errors are tungstenite's
//! `Error` values, so `relay::close` maps them to close codes unchanged.
//!
//! Fragmented messages are reassembled (browsers do not fragment, but may);
//! the relay itself always sends whole frames.

pub mod frame;
mod handshake;
mod read;
mod socket;

pub use handshake::{client_handshake, HandshakeError};
pub use socket::{Limits, Role, WsSocket, MAX_READ};

#[cfg(test)]
mod tests;
