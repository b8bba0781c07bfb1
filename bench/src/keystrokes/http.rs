//! The little HTTP/1.1 the typing bench speaks itself: where a message's head ends, how long
//! its body is, chunked transfer decoding, and the text of a llama.cpp completion stream. The
//! counting proxy and the direct client both use it; nothing here does I/O.

use anyhow::{bail, Context};

/// Largest request or response head accepted, in bytes.
pub const MAX_HEAD: usize = 64 * 1024;
/// Headers parsed at most.
const MAX_HEADERS: usize = 64;

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// `Content-Length` bytes (0 when there is no body).
    Bytes(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (a response with neither header).
    UntilClose,
}

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    /// Bytes of the head, blank line included.
    pub len: usize,
    /// The request target, e.g. `/v1/completions`.
    pub path: String,
    /// Its body length (requests with a chunked body are refused: no client here sends one).
    pub body: usize,
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    /// Bytes of the head, blank line included.
    pub len: usize,
    /// The status code.
    pub status: u16,
    /// How the body ends.
    pub body: BodyLength,
}

/// The request head at the start of `buf`, or `None` when more bytes are needed.
pub fn request_head(buf: &[u8]) -> anyhow::Result<Option<RequestHead>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf).context("a malformed HTTP request")? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial if buf.len() > MAX_HEAD => bail!("a request head over 64 KiB"),
        httparse::Status::Partial => return Ok(None),
    };
    let body = match body_length(request.headers)? {
        BodyLength::Bytes(n) => n,
        BodyLength::Chunked => bail!("a chunked request body (no client of this bench sends one)"),
        BodyLength::UntilClose => 0,
    };
    Ok(Some(RequestHead {
        len,
        path: request.path.unwrap_or("").to_owned(),
        body,
    }))
}

/// The response head at the start of `buf`, or `None` when more bytes are needed.
pub fn response_head(buf: &[u8]) -> anyhow::Result<Option<ResponseHead>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf).context("a malformed HTTP response")? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial if buf.len() > MAX_HEAD => bail!("a response head over 64 KiB"),
        httparse::Status::Partial => return Ok(None),
    };
    let status = response.code.unwrap_or(0);
    // 204 and 304 never have a body, whatever the headers say.
    let body = if status == 204 || status == 304 {
        BodyLength::Bytes(0)
    } else {
        body_length(response.headers)?
    };
    Ok(Some(ResponseHead { len, status, body }))
}

/// `Bytes(n)` for a `Content-Length`, `Chunked`, or `UntilClose` when neither is present.
fn body_length(headers: &[httparse::Header<'_>]) -> anyhow::Result<BodyLength> {
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let value = std::str::from_utf8(h.value).unwrap_or("");
            if value.to_ascii_lowercase().contains("chunked") {
                return Ok(BodyLength::Chunked);
            }
        }
    }
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(h.value).unwrap_or("").trim();
            let n = value
                .parse()
                .with_context(|| format!("Content-Length {value:?} is not a number"))?;
            return Ok(BodyLength::Bytes(n));
        }
    }
    Ok(BodyLength::UntilClose)
}

/// Decodes a chunked body fed in pieces of any size.
#[derive(Debug, Default)]
pub struct Chunked {
    pending: Vec<u8>,
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading a `size[;extension]\r\n` line.
    #[default]
    Size,
    /// Inside a chunk, with this many bytes left.
    Data(usize),
    /// Expecting the `\r\n` after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailer,
    /// The body has ended.
    Done,
}

impl Chunked {
    /// Feeds raw bytes; appends the decoded ones to `out` (at most `limit` bytes of `out`).
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>, limit: usize) -> anyhow::Result<()> {
        self.pending.extend_from_slice(bytes);
        let mut at = 0;
        // Every pass consumes bytes or returns, so this ends within pending.len() + 1 passes.
        loop {
            match self.state {
                ChunkState::Done => break,
                ChunkState::Size | ChunkState::Trailer => {
                    let Some(end) = find(&self.pending[at..], b"\r\n") else {
                        if self.pending.len() - at > 4096 {
                            bail!("a chunk-size line over 4 KiB");
                        }
                        break;
                    };
                    let line = &self.pending[at..at + end];
                    at += end + 2;
                    if self.state == ChunkState::Trailer {
                        if line.is_empty() {
                            self.state = ChunkState::Done;
                        }
                        continue;
                    }
                    let hex = std::str::from_utf8(line).unwrap_or("");
                    let hex = hex.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(hex, 16)
                        .with_context(|| format!("a chunk size {hex:?} that is not hex"))?;
                    self.state = if size == 0 {
                        ChunkState::Trailer
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    let take = left.min(self.pending.len() - at);
                    if take == 0 {
                        break;
                    }
                    let room = limit.saturating_sub(out.len()).min(take);
                    out.extend_from_slice(&self.pending[at..at + room]);
                    at += take;
                    self.state = if take == left {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - take)
                    };
                }
                ChunkState::DataEnd => {
                    if self.pending.len() - at < 2 {
                        break;
                    }
                    if &self.pending[at..at + 2] != b"\r\n" {
                        bail!("a chunk not followed by CRLF");
                    }
                    at += 2;
                    self.state = ChunkState::Size;
                }
            }
        }
        self.pending.drain(..at);
        Ok(())
    }

    /// Whether the last chunk and the trailer have been read.
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

/// Where `needle` first occurs in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What a completion stream (`/v1/completions`, a chat stream, or llama.cpp's `/infill`) carried: its text and
/// the events that carried some (llama.cpp streams one token per event), and whether it ended
/// (`[DONE]`, or a final `"stop": true` chunk).
#[derive(Debug, Default, Clone)]
pub struct StreamText {
    /// The completion's text.
    pub text: String,
    /// Events with non-empty text: the tokens generated and sent.
    pub tokens: u32,
    /// Whether the stream's end was seen.
    pub ended: bool,
}

/// Reads the server-sent events of a completion stream's decoded body.
pub fn stream_text(body: &[u8]) -> StreamText {
    let mut out = StreamText::default();
    for line in body.split(|&b| b == b'\n') {
        let Some(data) = line.strip_prefix(b"data:") else {
            continue;
        };
        let data = std::str::from_utf8(data).unwrap_or("").trim();
        if data == "[DONE]" {
            out.ended = true;
            continue;
        }
        let Ok(event) = serde_json::from_str::<serde_json::Value>(data) else {
            continue;
        };
        let text = event["choices"][0]["text"]
            .as_str()
            .or_else(|| event["choices"][0]["delta"]["content"].as_str())
            .or_else(|| event["content"].as_str())
            .unwrap_or("");
        if !text.is_empty() {
            out.tokens += 1;
            out.text.push_str(text);
        }
        if event["stop"] == true {
            out.ended = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_decode_whatever_the_pieces() {
        let raw = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n";
        for piece in 1..raw.len() {
            let mut decoder = Chunked::default();
            let mut out = Vec::new();
            for part in raw.chunks(piece) {
                decoder.feed(part, &mut out, 1024).unwrap();
            }
            assert_eq!(out, b"hello, world", "pieces of {piece}");
            assert!(decoder.done());
        }
    }

    #[test]
    fn completion_streams_count_tokens_and_see_the_end() {
        let body = b"data: {\"choices\":[{\"text\":\"fn\",\"index\":0}]}\n\n\
                     data: {\"choices\":[{\"text\":\"\",\"index\":0}]}\n\n\
                     data: {\"choices\":[{\"text\":\" main\",\"index\":0}]}\n\ndata: [DONE]\n\n";
        let stream = stream_text(body);
        assert_eq!(stream.text, "fn main");
        assert_eq!(stream.tokens, 2);
        assert!(stream.ended);
    }

    #[test]
    fn heads_say_how_bodies_end() {
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let parsed = response_head(head).unwrap().unwrap();
        assert_eq!((parsed.status, parsed.body), (200, BodyLength::Chunked));
        let head = b"POST /v1/completions HTTP/1.1\r\nContent-Length: 12\r\n\r\n{";
        let parsed = request_head(head).unwrap().unwrap();
        assert_eq!((parsed.path.as_str(), parsed.body), ("/v1/completions", 12));
        assert!(request_head(b"POST / HTTP/1.1\r\n").unwrap().is_none());
    }
}
