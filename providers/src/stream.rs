//! Readers for the two streaming formats the APIs use: server-sent events (OpenAI-compatible
//! servers, Anthropic, Copilot; parsed by `eventsource-stream`) and newline-delimited JSON
//! (Ollama). Both read from a [`Body`], so a stream is bounded in bytes, and both turn a line
//! that is not what the API promises into [`ProviderError::Malformed`] naming the line.

use std::pin::Pin;

use bytes::Bytes;
use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;

use crate::error::ProviderError;
use crate::http::{shorten, Body};

/// Longest NDJSON line accepted.
const MAX_LINE: usize = 1024 * 1024;

/// Newline-delimited JSON values, one per line.
#[derive(Debug)]
pub(crate) struct NdjsonReader {
    body: Body,
    buffer: Vec<u8>,
    /// Bytes of `buffer` already searched for a newline.
    scanned: usize,
    ended: bool,
    line: usize,
}

impl NdjsonReader {
    pub(crate) fn new(body: Body) -> NdjsonReader {
        NdjsonReader {
            body,
            buffer: Vec::new(),
            scanned: 0,
            ended: false,
            line: 0,
        }
    }

    /// The next value; `None` when the body ended (after a last line with or without its
    /// newline). Blank lines are skipped.
    pub(crate) async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ProviderError> {
        loop {
            if let Some(at) = memchr::memchr(b'\n', &self.buffer[self.scanned..]) {
                let end = self.scanned + at;
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                self.scanned = 0;
                if let Some(value) = self.parse(&line[..line.len() - 1])? {
                    return Ok(Some(value));
                }
                continue;
            }
            self.scanned = self.buffer.len();
            if self.ended {
                let rest = std::mem::take(&mut self.buffer);
                self.scanned = 0;
                return self.parse(&rest);
            }
            if self.buffer.len() > MAX_LINE {
                return Err(ProviderError::Malformed {
                    url: self.body.url().to_owned(),
                    detail: format!("a line longer than {MAX_LINE} bytes"),
                });
            }
            match self.body.chunk().await? {
                Some(chunk) => self.buffer.extend_from_slice(&chunk),
                None => self.ended = true,
            }
        }
    }

    fn parse<T: DeserializeOwned>(&mut self, line: &[u8]) -> Result<Option<T>, ProviderError> {
        self.line += 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        serde_json::from_slice(line)
            .map(Some)
            .map_err(|e| ProviderError::Malformed {
                url: self.body.url().to_owned(),
                detail: format!(
                    "line {} is not the JSON expected ({e}): {:?}",
                    self.line,
                    shorten(&String::from_utf8_lossy(line), 200)
                ),
            })
    }
}

type Chunks = Pin<Box<dyn Stream<Item = Result<Bytes, ProviderError>> + Send>>;

/// Server-sent events.
pub(crate) struct SseReader {
    url: String,
    events: Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<ProviderError>>> + Send>>,
}

impl std::fmt::Debug for SseReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseReader").field("url", &self.url).finish()
    }
}

impl SseReader {
    pub(crate) fn new(body: Body) -> SseReader {
        let url = body.url().to_owned();
        let chunks: Chunks = Box::pin(futures::stream::unfold(body, |mut body| async move {
            match body.chunk().await {
                Ok(Some(chunk)) => Some((Ok(chunk), body)),
                Ok(None) => None,
                Err(error) => Some((Err(error), body)),
            }
        }));
        SseReader {
            url,
            events: Box::pin(chunks.eventsource()),
        }
    }

    /// The next event (comments and keep-alives are skipped by the parser); `None` at the end
    /// of the body.
    pub(crate) async fn next(&mut self) -> Result<Option<Event>, ProviderError> {
        match self.events.next().await {
            None => Ok(None),
            Some(Ok(event)) => Ok(Some(event)),
            Some(Err(EventStreamError::Transport(error))) => Err(error),
            Some(Err(EventStreamError::Utf8(error))) => Err(ProviderError::Malformed {
                url: self.url.clone(),
                detail: format!("the event stream is not UTF-8: {error}"),
            }),
            Some(Err(EventStreamError::Parser(error))) => Err(ProviderError::Malformed {
                url: self.url.clone(),
                detail: format!("not a server-sent event stream: {error}"),
            }),
        }
    }

    /// The next event's data as JSON of type `T`, with the event's name; `None` at the end.
    /// `[DONE]` (OpenAI's end marker) comes back as `Done`.
    pub(crate) async fn next_json<T: DeserializeOwned>(
        &mut self,
    ) -> Result<Option<SseItem<T>>, ProviderError> {
        let Some(event) = self.next().await? else {
            return Ok(None);
        };
        if event.data.trim() == "[DONE]" {
            return Ok(Some(SseItem::Done));
        }
        serde_json::from_str(&event.data)
            .map(|data| {
                Some(SseItem::Data {
                    event: event.event,
                    data,
                })
            })
            .map_err(|e| ProviderError::Malformed {
                url: self.url.clone(),
                detail: format!(
                    "an event's data is not the JSON expected ({e}): {:?}",
                    shorten(&event.data, 200)
                ),
            })
    }

    /// The URL it came from, for errors.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }
}

/// One server-sent event, decoded.
#[derive(Debug)]
pub(crate) enum SseItem<T> {
    /// An event with JSON data.
    Data {
        /// The `event:` field (`message` when absent).
        event: String,
        /// The decoded `data:`.
        data: T,
    },
    /// `data: [DONE]`.
    Done,
}
