//! JSON-RPC 2.0 messages in LSP's base protocol: a `Content-Length` header, a blank line, and
//! that many bytes of JSON.
//!
//! Written here rather than taken from `lsp-server`, whose reader thread stops for good at the
//! first malformed message and allocates whatever `Content-Length` a client announces. Here a
//! header larger than [`MAX_HEADER_BYTES`] or a body larger than the reader's limit is an error
//! the caller answers and goes on from (the body is skipped, never held), and a body that is
//! not JSON is answered with a parse error; only the end of the input ends the reader.

use std::io::{BufRead, Read, Write};

use serde_json::{json, Value};

/// The most header bytes one message may have (editors send one or two short lines).
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

/// JSON-RPC and LSP error codes.
pub mod code {
    /// The body is not JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// JSON, but not a request, response or notification.
    pub const INVALID_REQUEST: i64 = -32600;
    /// No such method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// The params do not fit the method.
    pub const INVALID_PARAMS: i64 = -32602;
    /// Something went wrong in the server.
    pub const INTERNAL_ERROR: i64 = -32603;
    /// A request before `initialize`.
    pub const SERVER_NOT_INITIALIZED: i64 = -32002;
    /// The request was cancelled (`$/cancelRequest`, or superseded by a newer one).
    pub const REQUEST_CANCELLED: i64 = -32800;
    /// The server cannot answer now (the daemon is unreachable).
    pub const REQUEST_FAILED: i64 = -32803;
}

/// What the reader found.
#[derive(Debug)]
pub enum Incoming {
    /// A JSON value (not yet checked to be a well-formed message).
    Message(Value),
    /// Something the client sent that is not a message; answer with this error (id null).
    Malformed {
        /// The JSON-RPC error code.
        code: i64,
        /// What was wrong.
        message: String,
    },
}

/// Reads the next message, or `None` at the end of the input. An I/O error is returned as is
/// (the input is gone); anything malformed becomes [`Incoming::Malformed`].
pub fn read(input: &mut impl BufRead, max_body: usize) -> std::io::Result<Option<Incoming>> {
    let mut length: Option<usize> = None;
    let mut header_bytes = 0usize;
    let mut bad_header: Option<String> = None;
    let mut line = Vec::new();
    loop {
        let n = header_line(input, &mut line)?;
        if n == 0 {
            // The end of the input; a half-sent header is dropped with it.
            return Ok(None);
        }
        header_bytes += n;
        if header_bytes > MAX_HEADER_BYTES {
            // Skip to the blank line without keeping what is skipped.
            skip_header(input)?;
            return Ok(Some(Incoming::Malformed {
                code: code::INVALID_REQUEST,
                message: format!("header longer than {MAX_HEADER_BYTES} bytes"),
            }));
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            if length.is_none() && bad_header.is_none() && header_bytes <= 2 {
                // A stray blank line between messages: not a message at all.
                header_bytes = 0;
                continue;
            }
            break;
        }
        match text.split_once(':') {
            Some((name, value)) if name.trim().eq_ignore_ascii_case("content-length") => {
                match value.trim().parse::<usize>() {
                    Ok(n) => length = Some(n),
                    Err(_) => {
                        bad_header = Some(format!("Content-Length {value:?} is not a number"))
                    }
                }
            }
            Some(_) => {} // Content-Type and any other header: nothing to do.
            None => bad_header = Some(format!("{text:?} is not a header")),
        }
    }
    if let Some(message) = bad_header {
        return Ok(Some(Incoming::Malformed {
            code: code::PARSE_ERROR,
            message,
        }));
    }
    let Some(length) = length else {
        return Ok(Some(Incoming::Malformed {
            code: code::PARSE_ERROR,
            message: "a message without a Content-Length header".to_owned(),
        }));
    };
    if length > max_body {
        let skipped = std::io::copy(
            &mut input.by_ref().take(length as u64),
            &mut std::io::sink(),
        )?;
        if skipped < length as u64 {
            return Ok(None);
        }
        return Ok(Some(Incoming::Malformed {
            code: code::INVALID_REQUEST,
            message: format!(
                "a message of {length} bytes, over the limit of {max_body}: it was skipped"
            ),
        }));
    }
    let mut body = vec![0u8; length];
    if let Err(error) = input.read_exact(&mut body) {
        return if error.kind() == std::io::ErrorKind::UnexpectedEof {
            Ok(None)
        } else {
            Err(error)
        };
    }
    Ok(Some(match serde_json::from_slice(&body) {
        Ok(value) => Incoming::Message(value),
        Err(error) => Incoming::Malformed {
            code: code::PARSE_ERROR,
            message: format!("the body is not JSON: {error}"),
        },
    }))
}

/// Reads one header line into `line` (cleared first), at most `MAX_HEADER_BYTES + 1` bytes of
/// it; returns the bytes read (0 at the end of the input).
fn header_line(input: &mut impl BufRead, line: &mut Vec<u8>) -> std::io::Result<usize> {
    line.clear();
    input
        .by_ref()
        .take((MAX_HEADER_BYTES + 1) as u64)
        .read_until(b'\n', line)
}

fn skip_header(input: &mut impl BufRead) -> std::io::Result<()> {
    let mut line = Vec::new();
    loop {
        let n = header_line(input, &mut line)?;
        if n == 0 || line == b"\r\n" || line == b"\n" {
            return Ok(());
        }
    }
}

/// Writes one message with its header and flushes.
pub fn write(output: &mut impl Write, message: &Value) -> std::io::Result<()> {
    let body = serde_json::to_vec(message)?;
    write!(output, "Content-Length: {}\r\n\r\n", body.len())?;
    output.write_all(&body)?;
    output.flush()
}

/// A response with a result.
pub fn result(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// A response with an error.
pub fn error(id: &Value, code: i64, message: impl Into<String>) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message.into()}})
}

/// A notification from the server.
pub fn notification(method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "method": method, "params": params})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(body: &str) -> String {
        format!("Content-Length: {}\r\n\r\n{body}", body.len())
    }

    fn read_all(input: &str, max_body: usize) -> Vec<Incoming> {
        let mut reader = std::io::BufReader::new(input.as_bytes());
        let mut out = Vec::new();
        while let Some(m) = read(&mut reader, max_body).unwrap() {
            out.push(m);
            assert!(
                out.len() < 100,
                "the reader must end at the end of the input"
            );
        }
        out
    }

    #[test]
    fn messages_are_read_in_order_and_malformed_ones_do_not_stop_the_reader() {
        let input = [
            framed(r#"{"jsonrpc":"2.0","id":1,"method":"a"}"#),
            framed("{not json"),
            "Content-Length: twelve\r\n\r\n".to_owned(),
            format!(
                "Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n{}",
                framed("[]")
            ),
            framed(&format!("\"{}\"", "x".repeat(100))),
            framed(r#"{"jsonrpc":"2.0","method":"b"}"#),
        ]
        .concat();
        let got = read_all(&input, 64);
        let kinds: Vec<String> = got
            .iter()
            .map(|m| match m {
                Incoming::Message(v) => v.to_string(),
                Incoming::Malformed { code, .. } => code.to_string(),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                r#"{"id":1,"jsonrpc":"2.0","method":"a"}"#,
                "-32700",
                "-32700",
                "[]",
                "-32600",
                r#"{"jsonrpc":"2.0","method":"b"}"#,
            ]
        );
    }

    #[test]
    fn an_endless_header_or_a_cut_body_ends_cleanly() {
        let long = format!(
            "X-Junk: {}\r\n\r\n{}",
            "y".repeat(MAX_HEADER_BYTES * 3),
            framed("1")
        );
        let got = read_all(&long, 64);
        assert!(matches!(
            got[0],
            Incoming::Malformed {
                code: code::INVALID_REQUEST,
                ..
            }
        ));
        assert!(matches!(&got[1], Incoming::Message(v) if v == &json!(1)));
        assert!(read_all("Content-Length: 10\r\n\r\n{\"a\"", 64).is_empty());
        assert!(read_all("Content-Length: 1000\r\n\r\nshort", 64).is_empty());
    }

    #[test]
    fn written_messages_read_back() {
        let mut out = Vec::new();
        let message = result(&json!(7), json!({"items": ["é😀"]}));
        write(&mut out, &message).unwrap();
        let got = read_all(std::str::from_utf8(&out).unwrap(), 1024);
        assert!(matches!(&got[0], Incoming::Message(v) if v == &message));
    }
}
