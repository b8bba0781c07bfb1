//! Wire framing of one call on one QUIC bidirectional stream.
//!
//! Client to server: a request head, then message frames, then FIN (a bidirectional call may keep
//! sending messages before its FIN). Server to client: message frames, then one trailer frame with
//! the status, then FIN. `docs/protocol.md` gives the same layout byte by byte.
//!
//! The decoder is incremental (QUIC delivers a stream in chunks of any size), never panics on any
//! input, and never holds more than one frame of the configured maximum size. When a chunk holds
//! whole frames it hands them out as slices of that chunk without copying; only a frame that spans
//! chunks is gathered into a buffer of its own.

use bytes::{Buf, Bytes, BytesMut};
use zerocopy::byteorder::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::auth::{Token, TOKEN_LEN};
use crate::encoding::Encoding;
use crate::status::{Code, Status};

/// First two bytes of every request head.
pub const HEAD_MAGIC: [u8; 2] = *b"RP";
/// Protocol version in the request head.
pub const PROTOCOL_VERSION: u8 = 1;
/// Size of the fixed part of a request head.
pub const HEAD_FIXED_LEN: usize = 10;
/// Size of a frame header (kind byte and length).
pub const FRAME_HEADER_LEN: usize = 5;
/// Longest method path a head may carry.
pub const MAX_METHOD_LEN: usize = 255;

/// The fixed part of a request head, read and written in place.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct HeadFixed {
    magic: [u8; 2],
    version: u8,
    encoding: u8,
    deadline_ms: U32,
    method_len: u8,
    token_len: u8,
}

/// A frame header, read and written in place.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct FrameHeader {
    kind: u8,
    len: U32,
}

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// One message in the call's encoding.
    Message = 0,
    /// The call's status: one code byte, then a UTF-8 message. Server to client only, last.
    Trailer = 1,
}

/// The start of every call: which method, how it is encoded, its deadline and the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method's path as sent, e.g. `reaper.Health/check` (looked up by the server). Bytes,
    /// not a `String`: the server routes on them without allocating.
    pub method: Bytes,
    /// Encoding of the call's messages, both ways.
    pub encoding: Encoding,
    /// Milliseconds the client will wait from sending the head; 0 for no deadline.
    pub deadline_ms: u32,
    /// The daemon's token, proving the caller may use it.
    pub token: Token,
}

impl RequestHead {
    /// Appends the encoded head to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let method = &self.method[..];
        let method_len = method.len().min(MAX_METHOD_LEN);
        let fixed = HeadFixed {
            magic: HEAD_MAGIC,
            version: PROTOCOL_VERSION,
            encoding: self.encoding.as_u8(),
            deadline_ms: U32::new(self.deadline_ms),
            method_len: method_len as u8,
            token_len: TOKEN_LEN as u8,
        };
        out.extend_from_slice(fixed.as_bytes());
        out.extend_from_slice(&method[..method_len]);
        out.extend_from_slice(self.token.as_bytes());
    }
}

/// Appends a message frame to `out`.
pub fn encode_message(message: &[u8], out: &mut Vec<u8>) {
    encode_frame(FrameKind::Message, message, out);
}

/// Appends a frame header for a message of `len` bytes, for callers that write the message
/// straight after it (saves a copy when the message is encoded in place).
pub fn encode_message_header(len: usize, out: &mut Vec<u8>) {
    let header = FrameHeader {
        kind: FrameKind::Message as u8,
        len: U32::new(len as u32),
    };
    out.extend_from_slice(header.as_bytes());
}

/// Rewrites the length of the frame header at `out[at..at + 5]`, once the message after it
/// has been encoded in place.
pub fn patch_message_len(out: &mut [u8], at: usize) {
    let len = (out.len() - at - FRAME_HEADER_LEN) as u32;
    out[at + 1..at + FRAME_HEADER_LEN].copy_from_slice(&len.to_le_bytes());
}

/// Appends the trailer frame carrying `status` to `out`.
pub fn encode_trailer(status: &Status, out: &mut Vec<u8>) {
    let header = FrameHeader {
        kind: FrameKind::Trailer as u8,
        len: U32::new(1 + status.message.len() as u32),
    };
    out.extend_from_slice(header.as_bytes());
    out.push(status.code.as_u8());
    out.extend_from_slice(status.message.as_bytes());
}

fn encode_frame(kind: FrameKind, payload: &[u8], out: &mut Vec<u8>) {
    let header = FrameHeader {
        kind: kind as u8,
        len: U32::new(payload.len() as u32),
    };
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(payload);
}

/// One decoded unit of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A request head (first on a request stream).
    Head(RequestHead),
    /// A message; the bytes share the received chunk's memory where possible.
    Message(Bytes),
    /// A trailer (last on a response stream).
    Trailer(Status),
}

/// Why a stream's bytes are not a valid call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The head does not start with `RP`: not a reaper client.
    #[error("request head does not start with the magic bytes \"RP\": is this a reaper client?")]
    BadMagic,
    /// The head's version is not one this daemon speaks.
    #[error("protocol version {0} is not supported (this daemon speaks version 1)")]
    UnsupportedVersion(u8),
    /// The head names an encoding that does not exist.
    #[error("unknown encoding {0} in request head (0 = rkyv, 1 = json)")]
    UnknownEncoding(u8),
    /// The head's method is not UTF-8.
    #[error("method name in request head is not UTF-8")]
    MethodNotUtf8,
    /// The head's token has the wrong length.
    #[error("token in request head is {0} bytes; it must be 32")]
    BadTokenLength(u8),
    /// A frame kind this version does not know.
    #[error("unknown frame kind {0}")]
    UnknownFrameKind(u8),
    /// A frame larger than the configured maximum message size.
    #[error("frame of {len} bytes is over the {max}-byte limit ([rpc] max_message_size)")]
    TooLarge {
        /// Declared length.
        len: u64,
        /// Configured limit.
        max: u64,
    },
    /// A trailer in a request, or a trailer without a code.
    #[error("malformed trailer")]
    BadTrailer,
    /// The stream ended inside a frame.
    #[error("stream ended in the middle of a frame ({0} bytes left over)")]
    Truncated(usize),
}

impl FrameError {
    /// The status a server answers this error with.
    pub fn status(&self) -> Status {
        let code = match self {
            FrameError::TooLarge { .. } => Code::ResourceExhausted,
            _ => Code::InvalidArgument,
        };
        Status::new(code, self.to_string())
    }
}

/// Which side of a call a decoder reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Reads what a client sends: a head, then messages.
    Request,
    /// Reads what a server sends: messages, then a trailer.
    Response,
}

/// Incremental decoder of one direction of one call.
#[derive(Debug)]
pub struct FrameDecoder {
    side: Side,
    head_seen: bool,
    max_message: usize,
    /// Unread bytes of the latest chunk, when no frame is partially gathered.
    chunk: Bytes,
    /// A frame that spans chunks, being gathered.
    gathered: BytesMut,
}

impl FrameDecoder {
    /// A decoder for one direction of a call, refusing frames over `max_message` bytes.
    pub fn new(side: Side, max_message: usize) -> FrameDecoder {
        FrameDecoder {
            side,
            head_seen: side == Side::Response,
            max_message,
            chunk: Bytes::new(),
            gathered: BytesMut::new(),
        }
    }

    /// Adds the next chunk of the stream.
    pub fn push(&mut self, data: Bytes) {
        if self.gathered.is_empty() && self.chunk.is_empty() {
            self.chunk = data;
        } else {
            self.gathered.extend_from_slice(&self.chunk);
            self.chunk = Bytes::new();
            self.gathered.extend_from_slice(&data);
        }
    }

    /// Drops everything buffered, memory included (for a call already answered, whose further
    /// bytes are unwanted: keeping the capacity would hold a whole message per such call).
    pub fn clear(&mut self) {
        self.chunk = Bytes::new();
        self.gathered = BytesMut::new();
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.chunk.len() + self.gathered.len()
    }

    /// Call when the stream has ended: an error if it ended inside a frame.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.buffered() {
            0 => Ok(()),
            left => Err(FrameError::Truncated(left)),
        }
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let use_gathered = !self.gathered.is_empty();
        let buf: &[u8] = if use_gathered {
            &self.gathered
        } else {
            &self.chunk
        };
        let Some(len) = self.frame_len(buf)? else {
            return Ok(None);
        };
        let frame_bytes = if use_gathered {
            self.gathered.split_to(len).freeze()
        } else {
            self.chunk.split_to(len)
        };
        self.parse(frame_bytes).map(Some)
    }

    /// Length of the whole frame at the start of `buf`, if all of it is there.
    fn frame_len(&self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        if !self.head_seen {
            let Ok((fixed, _)) = HeadFixed::ref_from_prefix(buf) else {
                return check_magic_prefix(buf).map(|()| None);
            };
            check_head_fixed(fixed)?;
            let len = HEAD_FIXED_LEN + fixed.method_len as usize + fixed.token_len as usize;
            return Ok((buf.len() >= len).then_some(len));
        }
        let Ok((header, _)) = FrameHeader::ref_from_prefix(buf) else {
            return Ok(None);
        };
        let payload = header.len.get() as u64;
        if payload > self.max_message as u64 {
            return Err(FrameError::TooLarge {
                len: payload,
                max: self.max_message as u64,
            });
        }
        match (self.side, header.kind) {
            (_, 0) | (Side::Response, 1) => {}
            (Side::Request, 1) => return Err(FrameError::BadTrailer),
            (_, kind) => return Err(FrameError::UnknownFrameKind(kind)),
        }
        let len = FRAME_HEADER_LEN + payload as usize;
        Ok((buf.len() >= len).then_some(len))
    }

    fn parse(&mut self, mut bytes: Bytes) -> Result<Frame, FrameError> {
        if !self.head_seen {
            self.head_seen = true;
            return parse_head(bytes).map(Frame::Head);
        }
        let kind = bytes[0];
        bytes.advance(FRAME_HEADER_LEN);
        if kind == FrameKind::Message as u8 {
            return Ok(Frame::Message(bytes));
        }
        let (&code, message) = bytes.split_first().ok_or(FrameError::BadTrailer)?;
        let message = String::from_utf8_lossy(message).into_owned();
        Ok(Frame::Trailer(Status::new(Code::from_u8(code), message)))
    }
}

/// Rejects a short buffer early when what is there already cannot be a head.
fn check_magic_prefix(buf: &[u8]) -> Result<(), FrameError> {
    let n = buf.len().min(2);
    if buf[..n] != HEAD_MAGIC[..n] {
        return Err(FrameError::BadMagic);
    }
    if buf.len() > 2 && buf[2] != PROTOCOL_VERSION {
        return Err(FrameError::UnsupportedVersion(buf[2]));
    }
    Ok(())
}

fn check_head_fixed(fixed: &HeadFixed) -> Result<(), FrameError> {
    if fixed.magic != HEAD_MAGIC {
        return Err(FrameError::BadMagic);
    }
    if fixed.version != PROTOCOL_VERSION {
        return Err(FrameError::UnsupportedVersion(fixed.version));
    }
    if Encoding::from_u8(fixed.encoding).is_none() {
        return Err(FrameError::UnknownEncoding(fixed.encoding));
    }
    if fixed.token_len as usize != TOKEN_LEN {
        return Err(FrameError::BadTokenLength(fixed.token_len));
    }
    Ok(())
}

fn parse_head(bytes: Bytes) -> Result<RequestHead, FrameError> {
    let (fixed, rest) = HeadFixed::ref_from_prefix(&bytes).map_err(|_| FrameError::BadMagic)?;
    check_head_fixed(fixed)?;
    let method_len = fixed.method_len as usize;
    let (method, token) = rest.split_at(method_len);
    std::str::from_utf8(method).map_err(|_| FrameError::MethodNotUtf8)?;
    Ok(RequestHead {
        method: bytes.slice(HEAD_FIXED_LEN..HEAD_FIXED_LEN + method_len),
        encoding: Encoding::from_u8(fixed.encoding).ok_or(FrameError::BadMagic)?,
        deadline_ms: fixed.deadline_ms.get(),
        token: Token::from_slice(token).ok_or(FrameError::BadTokenLength(fixed.token_len))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn head() -> RequestHead {
        RequestHead {
            method: Bytes::from_static(b"reaper.Health/check"),
            encoding: Encoding::Json,
            deadline_ms: 5000,
            token: Token::from_bytes([7; 32]),
        }
    }

    fn request_bytes() -> Vec<u8> {
        let mut out = Vec::new();
        head().encode(&mut out);
        encode_message(b"{}", &mut out);
        encode_message(&[9u8; 300], &mut out);
        out
    }

    fn decode_all(decoder: &mut FrameDecoder) -> Result<Vec<Frame>, FrameError> {
        let mut frames = Vec::new();
        while let Some(frame) = decoder.next_frame()? {
            frames.push(frame);
        }
        Ok(frames)
    }

    #[test]
    fn request_round_trips_whatever_the_chunking() {
        let bytes = request_bytes();
        for chunk_len in [1, 2, 3, 7, 10, 64, bytes.len()] {
            let mut decoder = FrameDecoder::new(Side::Request, 1024);
            let mut frames = Vec::new();
            for chunk in bytes.chunks(chunk_len) {
                decoder.push(Bytes::copy_from_slice(chunk));
                frames.extend(decode_all(&mut decoder).unwrap());
            }
            decoder.finish().unwrap();
            assert_eq!(
                frames,
                vec![
                    Frame::Head(head()),
                    Frame::Message(Bytes::from_static(b"{}")),
                    Frame::Message(Bytes::from(vec![9u8; 300])),
                ],
                "chunk length {chunk_len}"
            );
        }
    }

    #[test]
    fn whole_frames_in_one_chunk_are_not_copied() {
        let bytes = Bytes::from(request_bytes());
        let mut decoder = FrameDecoder::new(Side::Request, 1024);
        decoder.push(bytes.clone());
        let frames = decode_all(&mut decoder).unwrap();
        let Frame::Message(message) = &frames[2] else {
            panic!("expected a message")
        };
        let start = bytes.as_ptr() as usize;
        let at = message.as_ptr() as usize;
        assert!(
            at > start && at < start + bytes.len(),
            "message shares the chunk"
        );
    }

    #[test]
    fn response_with_trailer_round_trips() {
        let mut out = Vec::new();
        encode_message(b"abc", &mut out);
        encode_trailer(&Status::new(Code::Unimplemented, "not yet"), &mut out);
        let mut decoder = FrameDecoder::new(Side::Response, 1024);
        decoder.push(Bytes::from(out));
        assert_eq!(
            decode_all(&mut decoder).unwrap(),
            vec![
                Frame::Message(Bytes::from_static(b"abc")),
                Frame::Trailer(Status::new(Code::Unimplemented, "not yet")),
            ]
        );
    }

    #[test]
    fn in_place_message_encoding_patches_the_length() {
        let mut out = vec![0xAA];
        encode_message_header(0, &mut out);
        out.extend_from_slice(b"hello");
        patch_message_len(&mut out, 1);
        let mut direct = vec![0xAA];
        encode_message(b"hello", &mut direct);
        assert_eq!(out, direct);
    }

    #[test]
    fn oversized_frames_are_refused_before_they_are_buffered() {
        let mut out = Vec::new();
        head().encode(&mut out);
        encode_message_header(1 << 30, &mut out);
        let mut decoder = FrameDecoder::new(Side::Request, 4096);
        decoder.push(Bytes::from(out));
        assert!(matches!(decoder.next_frame(), Ok(Some(Frame::Head(_)))));
        let err = decoder.next_frame().unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));
        assert_eq!(err.status().code, Code::ResourceExhausted);
    }

    #[test]
    fn bad_heads_are_named() {
        let cases: [(&[u8], FrameError); 4] = [
            (b"GET / HTTP/1.1\r\n", FrameError::BadMagic),
            (b"RP\x02", FrameError::UnsupportedVersion(2)),
            (
                b"RP\x01\x05\0\0\0\0\x01\x20",
                FrameError::UnknownEncoding(5),
            ),
            (
                b"RP\x01\x00\0\0\0\0\x01\x10",
                FrameError::BadTokenLength(16),
            ),
        ];
        for (bytes, expected) in cases {
            let mut decoder = FrameDecoder::new(Side::Request, 4096);
            decoder.push(Bytes::copy_from_slice(bytes));
            assert_eq!(decoder.next_frame().unwrap_err(), expected);
        }
    }

    #[test]
    fn truncated_stream_is_reported() {
        let bytes = request_bytes();
        let mut decoder = FrameDecoder::new(Side::Request, 4096);
        decoder.push(Bytes::copy_from_slice(&bytes[..bytes.len() - 1]));
        decode_all(&mut decoder).unwrap();
        assert!(matches!(decoder.finish(), Err(FrameError::Truncated(_))));
    }

    /// Random bytes, and valid streams with random corruption, never panic the decoder and never
    /// make it hold more than one frame of the limit plus one chunk.
    #[test]
    fn random_input_never_panics_and_stays_bounded() {
        const MAX: usize = 2048;
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let valid = request_bytes();
        for round in 0..20_000 {
            let side = if round % 2 == 0 {
                Side::Request
            } else {
                Side::Response
            };
            let mut decoder = FrameDecoder::new(side, MAX);
            let mut input = if round % 3 == 0 {
                let mut v = valid.clone();
                for _ in 0..rng.random_range(1..4) {
                    let i = rng.random_range(0..v.len());
                    v[i] = rng.random();
                }
                v
            } else {
                let len = rng.random_range(0..600);
                (0..len).map(|_| rng.random()).collect()
            };
            if round % 5 == 0 && input.len() > 3 {
                input[3] = 0;
            }
            for chunk in input.chunks(rng.random_range(1..80)) {
                decoder.push(Bytes::copy_from_slice(chunk));
                match decode_all(&mut decoder) {
                    Ok(_) => assert!(decoder.buffered() <= MAX + FRAME_HEADER_LEN + 80 + 300),
                    Err(_) => break,
                }
            }
        }
    }
}
