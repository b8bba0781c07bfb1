//! One step of an agent's conversation from the pool: the model's answer with the tools it
//! calls, from a provider that can call tools.
//!
//! The provider is picked as a chat's is (the one named, else the first whose chat model
//! matches, else the first that can), among those that call tools (not the offline model, not
//! Copilot). One that fails before its first piece is passed over for the next; after that, an
//! error ends the step. A step holds a chat slot and a provider slot, never the completions'
//! reserve, for as long as it streams. Unlike a chat it does not give way to completions: a
//! step is short, and one that went on from half a tool call would have to be asked again
//! whole.

use std::time::Instant;

use futures::StreamExt;

use crate::chat::{blames_provider, passed_over, start_in_order, ChatError, Counted, Need, Slots};
use crate::pool::{Entry, Pool, Skipped};
use crate::provider::{ChatPiece, ChatStream};
use crate::tools::{ConverseInput, ToolSpec, Turn};

/// One step to ask for, and whom to ask.
#[derive(Debug, Clone, Copy)]
pub struct ConverseAsk<'a> {
    /// The conversation so far.
    pub turns: &'a [Turn],
    /// The tools the model may call.
    pub tools: &'a [ToolSpec],
    /// Longest answer, in tokens.
    pub max_tokens: u32,
    /// The model wanted, if the user said.
    pub model: Option<&'a str>,
    /// The provider wanted (its name in `reaper.toml`), if the user said.
    pub provider: Option<&'a str>,
}

/// A step's answer in progress: read it with [`StepAnswer::next`]; drop it to stop.
pub struct StepAnswer<'a> {
    input: ConverseInput<'a>,
    order: Vec<&'a Entry>,
    next: usize,
    streaming: Option<Streaming<'a>>,
    /// The provider read last (the one that answered, once it is over).
    answered_by: Option<&'a Entry>,
    said_anything: bool,
    ended: bool,
    failures: Vec<(String, crate::ProviderError)>,
    skipped: Vec<Skipped>,
}

struct Streaming<'a> {
    entry: &'a Entry,
    stream: ChatStream,
    _slots: Slots<'a>,
    _counted: Counted<'a>,
}

impl std::fmt::Debug for StepAnswer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepAnswer")
            .field("provider", &self.provider())
            .field("said_anything", &self.said_anything)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Starts one step of an agent's conversation: picks who may answer, best first. Nothing
    /// is sent until the first [`StepAnswer::next`]. An error names what the user can ask for
    /// instead.
    pub fn converse<'a>(&'a self, ask: ConverseAsk<'a>) -> Result<StepAnswer<'a>, ChatError> {
        let (order, skipped) = self.chat_order(ask.provider, ask.model, Need::Tools)?;
        Ok(StepAnswer {
            input: ConverseInput {
                turns: ask.turns,
                tools: ask.tools,
                max_tokens: ask.max_tokens,
            },
            order,
            next: 0,
            streaming: None,
            answered_by: None,
            said_anything: false,
            ended: false,
            failures: Vec::new(),
            skipped,
        })
    }
}

impl StepAnswer<'_> {
    /// The provider answering (or about to), and its chat model.
    pub fn provider(&self) -> Option<(&str, &str)> {
        let entry = match (&self.streaming, self.answered_by) {
            (Some(s), _) => s.entry,
            (None, Some(entry)) => entry,
            (None, None) => self.order.get(self.next).copied()?,
        };
        Some((entry.provider.name(), entry.provider.chat_model()))
    }

    /// The next piece of the answer (text, a tool call, the counts); `None` once it is
    /// complete, and after an error. Cancel-safe.
    pub async fn next(&mut self) -> Option<Result<ChatPiece, ChatError>> {
        loop {
            if self.ended {
                return None;
            }
            let Some(streaming) = &mut self.streaming else {
                if let Err(error) = self.start_next().await {
                    self.ended = true;
                    return Some(Err(error));
                }
                continue;
            };
            let entry = streaming.entry;
            match streaming.stream.next().await {
                Some(Ok(piece)) => {
                    if !self.said_anything {
                        self.said_anything = true;
                        entry.state().succeeded();
                    }
                    return Some(Ok(piece));
                }
                None => {
                    if !self.said_anything {
                        entry.state().succeeded();
                    }
                    self.streaming = None;
                    self.ended = true;
                    return None;
                }
                Some(Err(error)) => {
                    self.streaming = None;
                    if self.said_anything {
                        if blames_provider(&error) {
                            entry.state().failed(&error, Instant::now());
                        }
                        self.ended = true;
                        return Some(Err(ChatError::Interrupted {
                            provider: entry.provider.name().to_owned(),
                            error,
                        }));
                    }
                    passed_over(entry, error, &mut self.failures, "an agent step");
                }
            }
        }
    }

    /// Asks the next provider in order; the error of all of them when none is left.
    async fn start_next(&mut self) -> Result<(), ChatError> {
        let input = self.input;
        let (entry, stream, slots) = start_in_order(
            &self.order,
            &mut self.next,
            &mut self.failures,
            &mut self.skipped,
            "an agent step",
            |entry| entry.provider.converse(input),
        )
        .await?;
        self.answered_by = Some(entry);
        self.streaming = Some(Streaming {
            entry,
            stream,
            _slots: slots,
            _counted: Counted::new(entry),
        });
        Ok(())
    }
}
