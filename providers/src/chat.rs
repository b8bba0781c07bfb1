//! A chat answer from the pool: which provider answers, the fallback while nothing has been
//! said yet, and the slot the answer holds on its provider.
//!
//! The provider is the one the request names (`provider`), else the first by priority and
//! measured latency whose chat model is the one asked for (`model`), else the first that can
//! chat. One that fails before its first piece of text is passed over for the next that
//! qualifies: the user has seen nothing, so nothing is lost. Once text has gone out, an error
//! ends the answer with the provider's own words ([`ChatError::Interrupted`]): starting again
//! elsewhere would repeat or contradict what the user already read.
//!
//! A chat holds one of its provider's `max_in_flight` slots for as long as it streams, but
//! never one of the `completion_reserve` slots kept for completions: a keystroke's completion
//! does not queue behind a long answer. Dropping the answer drops its HTTP request (the model
//! server stops generating) and gives the slot back.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use reaper_core::schema::{ChatMessage, Role};
use tokio::sync::SemaphorePermit;

use crate::error::ProviderError;
use crate::pool::{describe, Entry, Pool, PoolError, Skipped};
use crate::provider::{ChatInput, ChatPiece, ChatStream};

/// Longest answer when the request sets no `max_tokens`.
pub const DEFAULT_CHAT_MAX_TOKENS: u32 = 1024;
/// Most tokens a request may ask for.
pub const MAX_CHAT_TOKENS: u32 = 32_768;

/// What to answer and whom to ask.
#[derive(Debug, Clone, Copy)]
pub struct ChatAsk<'a> {
    /// The conversation; the last message is the one to answer.
    pub messages: &'a [ChatMessage],
    /// Longest answer, in tokens.
    pub max_tokens: u32,
    /// The model wanted, if the user said.
    pub model: Option<&'a str>,
    /// The provider wanted (its name in `reaper.toml`), if the user said.
    pub provider: Option<&'a str>,
}

/// Why a chat could not be answered, or stopped.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ChatError {
    /// The request names a provider that is not configured.
    #[error("no provider is named {name:?}: {}", known_providers(.known))]
    UnknownProvider {
        /// The name asked for.
        name: String,
        /// The providers that can chat.
        known: Vec<String>,
    },
    /// The request names a provider that cannot chat (the offline model).
    #[error("provider {name:?} (kind {kind}) does not chat: {}", known_providers(.known))]
    CannotChat {
        /// The name asked for.
        name: String,
        /// Its kind.
        kind: String,
        /// The providers that can chat.
        known: Vec<String>,
    },
    /// The request names a provider that is disabled in `reaper.toml`.
    #[error("provider {name:?} is disabled (enabled = false in reaper.toml)")]
    Disabled {
        /// The name asked for.
        name: String,
    },
    /// No provider's chat model is the one asked for.
    #[error("no provider serves model {model:?}: {}", known_models(.known))]
    UnknownModel {
        /// The model asked for.
        model: String,
        /// `(model, provider)` of every provider that can chat.
        known: Vec<(String, String)>,
    },
    /// The request names a provider that cannot call tools (the agent needs them).
    #[error("provider {name:?} (kind {kind}) cannot call tools, which the agent needs: {}", tool_providers(.known))]
    CannotCallTools {
        /// The name asked for.
        name: String,
        /// Its kind.
        kind: String,
        /// The providers that can.
        known: Vec<String>,
    },
    /// No enabled provider can call tools.
    #[error("no provider that calls tools is configured (the agent needs one; the embedded offline model and Copilot do not): add one to reaper.toml, e.g. [providers.local] with kind = \"openai\", base_url = \"http://127.0.0.1:8080/v1\" and model = \"...\" for a llama.cpp server started with --jinja, then restart reaperd")]
    NoToolProvider,
    /// No enabled provider can chat.
    #[error("no chat provider is configured (the embedded offline model completes code, it does not chat): add one to reaper.toml, e.g. [providers.local] with kind = \"openai\", base_url = \"http://127.0.0.1:8080/v1\" and model = \"...\" for a llama.cpp server, then restart reaperd")]
    NoChatProvider,
    /// Every provider tried failed before saying anything.
    #[error("no provider could answer: {}", describe(&.0.failures, &.0.skipped))]
    Failed(PoolError),
    /// The answer broke off after it had started; the message is the provider's own.
    #[error("{provider} stopped mid-answer: {error}")]
    Interrupted {
        /// The provider that was answering.
        provider: String,
        /// Why it stopped.
        error: ProviderError,
    },
}

fn known_providers(known: &[String]) -> String {
    if known.is_empty() {
        "no provider can chat (configure one in reaper.toml)".to_owned()
    } else {
        format!("the chat providers are {}", known.join(", "))
    }
}

fn tool_providers(known: &[String]) -> String {
    if known.is_empty() {
        "no provider can call tools (configure one in reaper.toml)".to_owned()
    } else {
        format!("the providers that can are {}", known.join(", "))
    }
}

/// What an answer needs of its provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// Streamed chat.
    Chat,
    /// Tool calls (an agent's steps).
    Tools,
}

impl Need {
    fn met_by(self, capabilities: &crate::provider::Capabilities) -> bool {
        match self {
            Need::Chat => capabilities.chat,
            Need::Tools => capabilities.chat && capabilities.tools,
        }
    }
}

fn known_models(known: &[(String, String)]) -> String {
    if known.is_empty() {
        "no provider can chat (configure one in reaper.toml)".to_owned()
    } else {
        let models: Vec<String> = known
            .iter()
            .map(|(model, provider)| format!("{model} ({provider})"))
            .collect();
        format!("the models are {}", models.join(", "))
    }
}

/// Whether `asked` names `served` (case aside; Ollama's `:latest` may be left out).
fn model_matches(served: &str, asked: &str) -> bool {
    served.eq_ignore_ascii_case(asked)
        || served
            .strip_suffix(":latest")
            .is_some_and(|s| s.eq_ignore_ascii_case(asked))
}

impl Pool {
    /// Starts answering `ask`: picks who may answer, best first. Nothing is sent until the
    /// answer's first [`ChatAnswer::next`]. An error names what the user can ask for instead.
    pub fn chat<'a>(&'a self, ask: ChatAsk<'a>) -> Result<ChatAnswer<'a>, ChatError> {
        let (order, passed_over) = self.chat_order(ask.provider, ask.model, Need::Chat)?;
        Ok(ChatAnswer {
            input: ChatInput {
                messages: ask.messages,
                system: None,
                max_tokens: ask.max_tokens,
            },
            order,
            next: 0,
            phase: Phase::Asking,
            answered_by: None,
            said_anything: false,
            said: None,
            skip: String::new(),
            yields: 0,
            failures: Vec::new(),
            skipped: passed_over,
        })
    }

    /// Who may answer a chat (or, with [`Need::Tools`], an agent's step), best first, and
    /// who was passed over: the provider named, else those whose chat model is `model`, else
    /// all that can. An error names what the user can ask for instead.
    pub(crate) fn chat_order<'a>(
        &'a self,
        provider: Option<&str>,
        model: Option<&str>,
        need: Need,
    ) -> Result<(Vec<&'a Entry>, Vec<Skipped>), ChatError> {
        let chatty = |e: &Entry| !e.last_resort && need.met_by(&e.provider.capabilities());
        let known = || -> Vec<String> {
            self.entries
                .iter()
                .filter(|e| chatty(e) && e.placement.enabled)
                .map(|e| e.provider.name().to_owned())
                .collect()
        };
        let (ready, skipped) = self.candidates(Instant::now());
        let mut order: Vec<&'a Entry> = Vec::new();
        let mut passed_over = Vec::new();
        if let Some(name) = provider {
            let Some(entry) = self.entries.iter().find(|e| e.provider.name() == name) else {
                return Err(ChatError::UnknownProvider {
                    name: name.to_owned(),
                    known: known(),
                });
            };
            if !chatty(entry) {
                let (name, kind, known) =
                    (name.to_owned(), entry.provider.kind().to_owned(), known());
                return Err(match need {
                    Need::Chat => ChatError::CannotChat { name, kind, known },
                    Need::Tools => ChatError::CannotCallTools { name, kind, known },
                });
            }
            if !entry.placement.enabled {
                return Err(ChatError::Disabled {
                    name: name.to_owned(),
                });
            }
            // Named by the user: asked even while set aside (its state may be stale), unless
            // a model was named too that it does not serve.
            if let Some(model) = model.filter(|m| !model_matches(entry.provider.chat_model(), m)) {
                return Err(ChatError::UnknownModel {
                    model: model.to_owned(),
                    known: vec![(
                        entry.provider.chat_model().to_owned(),
                        entry.provider.name().to_owned(),
                    )],
                });
            }
            order.push(entry);
        } else {
            let wanted = |e: &Entry| {
                chatty(e) && model.is_none_or(|m| model_matches(e.provider.chat_model(), m))
            };
            let any = self
                .entries
                .iter()
                .any(|e| wanted(e) && e.placement.enabled);
            if !any {
                return Err(match model {
                    Some(model) => ChatError::UnknownModel {
                        model: model.to_owned(),
                        known: self
                            .entries
                            .iter()
                            .filter(|e| chatty(e) && e.placement.enabled)
                            .map(|e| {
                                (
                                    e.provider.chat_model().to_owned(),
                                    e.provider.name().to_owned(),
                                )
                            })
                            .collect(),
                    },
                    None => match need {
                        Need::Chat => ChatError::NoChatProvider,
                        Need::Tools => ChatError::NoToolProvider,
                    },
                });
            }
            for entry in ready {
                if wanted(&entry) {
                    // The pool's entries live as long as the pool: borrowed from there, not
                    // from the temporary list.
                    let index = self
                        .entries
                        .iter()
                        .position(|e| Arc::ptr_eq(e, &entry))
                        .unwrap_or(0);
                    order.push(&self.entries[index]);
                }
            }
            passed_over = skipped
                .into_iter()
                .filter(|s| {
                    self.entries
                        .iter()
                        .any(|e| e.provider.name() == s.name && wanted(e))
                })
                .collect();
        }
        Ok((order, passed_over))
    }
}

/// The slots a chat holds on its provider: one of the chats' share, and the slot it stands for.
pub(crate) type Slots<'a> = (SemaphorePermit<'a>, SemaphorePermit<'a>);

/// Where an answer stands.
enum Phase<'a> {
    /// Asking the next provider in order.
    Asking,
    /// A provider is answering.
    Streaming {
        entry: &'a Entry,
        stream: ChatStream,
        slots: Slots<'a>,
        _counted: Counted<'a>,
    },
    /// The provider's answer was set aside for completions: its request dropped, and its
    /// provider slot given back (a completion may need it: with `max_in_flight = 1` the chat
    /// holds the only one), its place among the chats kept. It goes on from what it said once
    /// they are done.
    Yielded {
        entry: &'a Entry,
        chat_slot: SemaphorePermit<'a>,
    },
    /// Complete, or failed.
    Ended,
}

/// A chat streaming from an entry, counted in its `streaming` for as long as it lives.
pub(crate) struct Counted<'a>(&'a Entry);

impl<'a> Counted<'a> {
    pub(crate) fn new(entry: &'a Entry) -> Counted<'a> {
        entry.streaming.fetch_add(1, Ordering::Relaxed);
        Counted(entry)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.streaming.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Most of an answer kept for going on from after a yield; an answer longer than this no
/// longer yields (its text is not kept, and asking again with it would cost its evaluation).
pub const MAX_PREFILL: usize = 64 * 1024;

/// A chat answer in progress: read it with [`ChatAnswer::next`]; drop it to stop.
pub struct ChatAnswer<'a> {
    input: ChatInput<'a>,
    /// Who may answer, best first.
    order: Vec<&'a Entry>,
    next: usize,
    phase: Phase<'a>,
    /// The provider whose stream was read last (the one that answered, once it is over).
    answered_by: Option<&'a Entry>,
    /// Whether any text has been given out.
    said_anything: bool,
    /// The text given out so far, kept only while the answer may still yield (its provider
    /// yields, and it is under [`MAX_PREFILL`]): what it goes on from.
    said: Option<String>,
    /// Whitespace to drop from the start of a resumed answer: the end of what was said, which
    /// could not end the prefill (APIs refuse a prefill ending in whitespace).
    skip: String,
    /// Times the answer gave way to completions.
    yields: u32,
    failures: Vec<(String, ProviderError)>,
    skipped: Vec<Skipped>,
}

impl std::fmt::Debug for ChatAnswer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatAnswer")
            .field("provider", &self.provider())
            .field("said_anything", &self.said_anything)
            .field("yields", &self.yields)
            .finish_non_exhaustive()
    }
}

/// How long the completions' demand on a provider must have been gone before a chat that
/// yielded goes on: a person typing asks for a completion every 100–300 ms, and a chat that
/// resumed between two keystrokes would only be set aside again at the next (its prompt
/// evaluated again each time).
pub const RESUME_AFTER: Duration = Duration::from_millis(250);

/// Whether a failure says something about the provider (and so counts against its health for
/// completions too), rather than about this conversation: a 400 for a conversation longer than
/// the model's context is the request's, not the server's.
pub(crate) fn blames_provider(error: &ProviderError) -> bool {
    !matches!(
        error,
        ProviderError::Http {
            status: 400 | 413 | 422,
            ..
        }
    )
}

impl<'a> ChatAnswer<'a> {
    /// The provider answering (or about to), and its chat model.
    pub fn provider(&self) -> Option<(&str, &str)> {
        let entry = match (&self.phase, self.answered_by) {
            (Phase::Streaming { entry, .. } | Phase::Yielded { entry, .. }, _) => *entry,
            (_, Some(entry)) => entry,
            _ => self.order.get(self.next).copied()?,
        };
        Some((entry.provider.name(), entry.provider.chat_model()))
    }

    /// Times the answer gave way to completions on its provider (`chat_yields`).
    pub fn yields(&self) -> u32 {
        self.yields
    }

    /// The next piece of the answer; `None` once it is complete. After an error, `None`.
    /// Cancel-safe: a call dropped before it returns loses nothing.
    pub async fn next(&mut self) -> Option<Result<ChatPiece, ChatError>> {
        loop {
            match &mut self.phase {
                Phase::Ended => return None,
                Phase::Asking => {
                    if let Err(error) = self.start_next().await {
                        self.phase = Phase::Ended;
                        return Some(Err(error));
                    }
                }
                Phase::Yielded { entry, .. } => {
                    let entry = *entry;
                    wait_for_quiet(entry).await;
                    if let Err(error) = self.resume().await {
                        if let Some(outcome) = self.failed(entry, error) {
                            return Some(Err(outcome));
                        }
                    }
                }
                Phase::Streaming { entry, stream, .. } => {
                    let entry = *entry;
                    let piece = if self.said.is_some() {
                        // A completion asking this provider sets the answer aside when the
                        // server cannot serve them all at once (llama.cpp says how many it
                        // can; one, unless a server says).
                        let slots = entry.provider.backend_slots().unwrap_or(1);
                        let mut demand = entry.demand.subscribe();
                        let crowded = |asking: &usize| {
                            *asking > 0 && *asking + entry.streaming.load(Ordering::Relaxed) > slots
                        };
                        tokio::select! {
                            biased;
                            _ = demand.wait_for(crowded) => None,
                            piece = stream.next() => Some(piece),
                        }
                    } else {
                        Some(stream.next().await)
                    };
                    let Some(piece) = piece else {
                        self.set_aside();
                        continue;
                    };
                    if let Some(outcome) = self.take(entry, piece) {
                        return outcome;
                    }
                }
            }
        }
    }

    /// Handles one piece read from the provider answering: what `next` returns, if anything.
    fn take(
        &mut self,
        entry: &'a Entry,
        piece: Option<Result<ChatPiece, ProviderError>>,
    ) -> Option<Option<Result<ChatPiece, ChatError>>> {
        match piece {
            Some(Ok(ChatPiece::Text(mut text))) => {
                // The whitespace the prefill could not end with, said again: dropped, a
                // character at a time.
                while !self.skip.is_empty() {
                    match text.chars().next() {
                        Some(c) if c.is_whitespace() => {
                            text.drain(..c.len_utf8());
                            let first = self.skip.chars().next().map_or(1, char::len_utf8);
                            self.skip.drain(..first);
                        }
                        Some(_) => self.skip.clear(),
                        None => break,
                    }
                }
                if text.is_empty() {
                    return None;
                }
                if !self.said_anything {
                    self.said_anything = true;
                    entry.state().succeeded();
                }
                if let Some(said) = &mut self.said {
                    if said.len() + text.len() > MAX_PREFILL {
                        self.said = None;
                    } else {
                        said.push_str(&text);
                    }
                }
                Some(Some(Ok(ChatPiece::Text(text))))
            }
            // After a yield, the counts cover only the last part of the answer: not given.
            Some(Ok(ChatPiece::Usage(_))) if self.yields > 0 => None,
            Some(Ok(piece)) => Some(Some(Ok(piece))),
            Some(Err(error)) => self.failed(entry, error).map(|error| Some(Err(error))),
            None => {
                // An answer may be empty (the model said nothing): that is an answer.
                let mut state = entry.state();
                if !self.said_anything {
                    state.succeeded();
                }
                state.stats.chats += 1;
                drop(state);
                self.phase = Phase::Ended;
                Some(None)
            }
        }
    }

    /// The provider answering failed: the error that ends the answer once words have gone
    /// out; before that, `None`, and the next provider is asked.
    fn failed(&mut self, entry: &'a Entry, error: ProviderError) -> Option<ChatError> {
        if blames_provider(&error) {
            entry.state().failed(&error, Instant::now());
        }
        if self.said_anything {
            self.phase = Phase::Ended;
            return Some(ChatError::Interrupted {
                provider: entry.provider.name().to_owned(),
                error,
            });
        }
        self.phase = Phase::Asking;
        self.answered_by = None;
        tracing::debug!(provider = entry.provider.name(), %error, "chat failed before its first words; asking the next provider");
        self.failures
            .push((entry.provider.name().to_owned(), error));
        None
    }

    /// Drops the provider's request (it stops generating) and gives back its provider slot.
    fn set_aside(&mut self) {
        if let Phase::Streaming {
            entry,
            slots: (chat_slot, _slot),
            ..
        } = std::mem::replace(&mut self.phase, Phase::Ended)
        {
            self.yields += 1;
            entry.state().stats.chat_yields += 1;
            tracing::debug!(
                provider = entry.provider.name(),
                said = self.said.as_ref().map_or(0, String::len),
                "chat gives way to a completion"
            );
            self.phase = Phase::Yielded { entry, chat_slot };
        }
    }

    /// Asks the provider that yielded to go on from what it said, once it has a provider slot
    /// again. Cancel-safe: dropped while it waits, it waits again when called again.
    async fn resume(&mut self) -> Result<(), ProviderError> {
        let Phase::Yielded { entry, .. } = &self.phase else {
            return Ok(());
        };
        let entry = *entry;
        let Ok(slot) = entry.slots.acquire().await else {
            return Ok(()); // a closed semaphore: never, the pool never closes them
        };
        let said = self.said.as_deref().unwrap_or("");
        let prefill = said.trim_end();
        let mut messages = self.input.messages.to_vec();
        if !prefill.is_empty() {
            messages.push(ChatMessage {
                role: Role::Assistant,
                content: prefill.to_owned(),
                timestamp: 0,
            });
        }
        let skip = said[prefill.len()..].to_owned();
        let input = ChatInput {
            messages: &messages,
            ..self.input
        };
        let stream = entry.provider.chat(input).await?;
        self.skip = skip;
        if let Phase::Yielded { entry, chat_slot } =
            std::mem::replace(&mut self.phase, Phase::Ended)
        {
            tracing::debug!(provider = entry.provider.name(), "chat goes on");
            self.phase = Phase::Streaming {
                entry,
                stream,
                slots: (chat_slot, slot),
                _counted: Counted::new(entry),
            };
        }
        Ok(())
    }

    /// Asks the next provider in order; the error of all of them when none is left.
    /// Cancel-safe: dropped while it waits (for a slot, or for the provider), it starts that
    /// provider again when called again.
    async fn start_next(&mut self) -> Result<(), ChatError> {
        let input = self.input;
        let (entry, stream, slots) = start_in_order(
            &self.order,
            &mut self.next,
            &mut self.failures,
            &mut self.skipped,
            "chat",
            |entry| entry.provider.chat(input),
        )
        .await?;
        self.answered_by = Some(entry);
        // Only an answer that may yield keeps what it says.
        let yields = entry.placement.chat_yields && entry.provider.continues_answers();
        self.said = yields.then(String::new);
        self.phase = Phase::Streaming {
            entry,
            stream,
            slots,
            _counted: Counted::new(entry),
        };
        Ok(())
    }
}

/// Asks the providers of `order` in turn from `*next` on, each with a chat slot and then the
/// provider slot it stands for (so at most `max_in_flight` minus the reserve of chats hold
/// provider slots, whatever the completions do), until one starts answering; those that fail
/// first are passed over (`what` names the work in the log). The error of all of them when
/// none is left. Cancel-safe: `*next` moves only once a provider has answered, so a caller
/// dropped while it waits asks that provider again. Shared by chats and agent steps.
pub(crate) async fn start_in_order<'a, F>(
    order: &[&'a Entry],
    next: &mut usize,
    failures: &mut Vec<(String, ProviderError)>,
    skipped: &mut Vec<crate::pool::Skipped>,
    what: &str,
    mut start: F,
) -> Result<(&'a Entry, ChatStream, Slots<'a>), ChatError>
where
    F: FnMut(&'a Entry) -> futures::future::BoxFuture<'a, Result<ChatStream, ProviderError>>,
{
    while let Some(&entry) = order.get(*next) {
        let chat_slot = entry.chat_slots.acquire().await;
        let slot = entry.slots.acquire().await;
        let started = start(entry).await;
        *next += 1;
        let (Ok(chat_slot), Ok(slot)) = (chat_slot, slot) else {
            continue; // closed semaphores: never, the pool never closes them
        };
        match started {
            Ok(stream) => return Ok((entry, stream, (chat_slot, slot))),
            Err(error) => passed_over(entry, error, failures, what),
        }
    }
    Err(ChatError::Failed(PoolError {
        failures: std::mem::take(failures),
        skipped: std::mem::take(skipped),
    }))
}

/// A provider that failed before its first piece: counted against it (unless the request
/// was at fault), noted, and passed over for the next.
pub(crate) fn passed_over(
    entry: &Entry,
    error: ProviderError,
    failures: &mut Vec<(String, ProviderError)>,
    what: &str,
) {
    if blames_provider(&error) {
        entry.state().failed(&error, Instant::now());
    }
    tracing::debug!(provider = entry.provider.name(), %error, "{what} failed before its first piece; asking the next provider");
    failures.push((entry.provider.name().to_owned(), error));
}

/// Waits until no completion has asked `entry` for [`RESUME_AFTER`].
async fn wait_for_quiet(entry: &Entry) {
    let mut demand = entry.demand.subscribe();
    loop {
        // The sender lives as long as the entry: an error cannot happen while we hold it.
        let _ = demand.wait_for(|asking| *asking == 0).await;
        let quiet = tokio::time::sleep(RESUME_AFTER);
        tokio::select! {
            () = quiet => return,
            _ = demand.wait_for(|asking| *asking > 0) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use reaper_core::schema::{CompletionRequest, Role};

    use super::*;
    use crate::pool::Placement;
    use crate::provider::{
        BoxFuture, Capabilities, CompletionInput, ProbeReport, Proposal, Provider, TokenUsage,
    };

    /// A chat provider whose answer the test scripts: pieces of text at a pace, then the end,
    /// or an error after `fail_after` pieces. Asked with its answer's beginning as the last
    /// (assistant) message, it goes on from there, as llama.cpp, Ollama and Anthropic do.
    struct Talker {
        name: &'static str,
        model: &'static str,
        words: Vec<&'static str>,
        pace: Duration,
        fail_after: Option<usize>,
        /// How long a completion takes.
        completing: Duration,
        /// What its server says it serves at once.
        slots: Option<usize>,
        /// Chats started, and streams dropped before their end.
        started: AtomicU32,
        dropped: Arc<AtomicU32>,
        /// The conversation of each chat asked.
        asked: std::sync::Mutex<Vec<Vec<ChatMessage>>>,
    }

    impl Talker {
        fn new(name: &'static str, model: &'static str, words: &[&'static str]) -> Talker {
            Talker {
                name,
                model,
                words: words.to_vec(),
                pace: Duration::from_millis(1),
                fail_after: None,
                completing: Duration::ZERO,
                slots: None,
                started: AtomicU32::new(0),
                dropped: Arc::new(AtomicU32::new(0)),
                asked: std::sync::Mutex::default(),
            }
        }
    }

    /// Counts a stream dropped before it ended.
    struct DropCount(Arc<AtomicU32>, bool);

    impl Drop for DropCount {
        fn drop(&mut self) {
            if !self.1 {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn boom() -> ProviderError {
        ProviderError::Stream {
            url: "http://x/v1/messages".into(),
            message: "overloaded_error: Overloaded".into(),
        }
    }

    impl Provider for Talker {
        fn name(&self) -> &str {
            self.name
        }
        fn kind(&self) -> &'static str {
            "openai"
        }
        fn model(&self) -> &str {
            self.model
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::remote(false)
        }
        fn backend_slots(&self) -> Option<usize> {
            self.slots
        }
        fn continues_answers(&self) -> bool {
            true
        }
        fn complete<'a>(
            &'a self,
            _: CompletionInput<'a>,
        ) -> BoxFuture<'a, Result<Proposal, ProviderError>> {
            Box::pin(async {
                tokio::time::sleep(self.completing).await;
                Ok(Proposal {
                    text: "done".into(),
                    confidence: 0.5,
                })
            })
        }
        fn chat<'a>(
            &'a self,
            input: ChatInput<'a>,
        ) -> BoxFuture<'a, Result<ChatStream, ProviderError>> {
            self.started.fetch_add(1, Ordering::Relaxed);
            self.asked.lock().unwrap().push(input.messages.to_vec());
            // Goes on after what the last assistant message says, if it ends the
            // conversation.
            let said = input
                .messages
                .last()
                .filter(|m| m.role == Role::Assistant)
                .map_or(String::new(), |m| m.content.clone());
            let from = (0..=self.words.len())
                .find(|&n| self.words[..n].concat().trim_end() == said)
                .unwrap_or(0);
            let (words, pace, fail_after) = (self.words.clone(), self.pace, self.fail_after);
            let dropped = self.dropped.clone();
            Box::pin(async move {
                if fail_after == Some(0) {
                    return Err(boom());
                }
                let guard = DropCount(dropped, false);
                let stream = futures::stream::unfold((from, guard), move |(n, mut guard)| {
                    let words = words.clone();
                    async move {
                        tokio::time::sleep(pace).await;
                        if fail_after == Some(n) {
                            guard.1 = true;
                            return Some((Err(boom()), (n + 1, guard)));
                        }
                        match words.get(n) {
                            Some(word) => {
                                Some((Ok(ChatPiece::Text(word.to_string())), (n + 1, guard)))
                            }
                            None if n == words.len() => Some((
                                Ok(ChatPiece::Usage(TokenUsage {
                                    input: 7,
                                    output: n as u32,
                                })),
                                (n + 1, guard),
                            )),
                            None => {
                                // The stream ended: not a drop.
                                guard.1 = true;
                                drop(guard);
                                None
                            }
                        }
                    }
                });
                Ok(Box::pin(stream) as ChatStream)
            })
        }
        fn probe(&self) -> BoxFuture<'_, Result<ProbeReport, ProviderError>> {
            Box::pin(async { Ok(ProbeReport::default()) })
        }
    }

    fn placement(priority: u32, max_in_flight: usize) -> Placement {
        Placement {
            priority,
            timeout: Duration::from_secs(2),
            max_in_flight,
            enabled: true,
            completion_reserve: 1,
            chat_yields: false,
        }
    }

    fn question() -> Vec<ChatMessage> {
        vec![ChatMessage {
            role: Role::User,
            content: "Why?".into(),
            timestamp: 0,
        }]
    }

    fn ask<'a>(messages: &'a [ChatMessage]) -> ChatAsk<'a> {
        ChatAsk {
            messages,
            max_tokens: 64,
            model: None,
            provider: None,
        }
    }

    /// A pool of `local` alone, chats yielding to completions, `max_in_flight` slots.
    fn yielding_pool(local: Arc<Talker>, max_in_flight: usize) -> Arc<Pool> {
        let mut pool = Pool::new();
        let placement = Placement {
            chat_yields: true,
            ..placement(1, max_in_flight)
        };
        pool.add(local, placement, false);
        Arc::new(pool)
    }

    /// A keystroke's completion from `pool`.
    async fn keystroke(pool: &Pool) -> crate::Answer {
        let request = CompletionRequest {
            prefix: "fn ".into(),
            suffix: String::new(),
            language: "rust".into(),
            file_path: None,
            context: None,
        };
        pool.complete(&request, Instant::now() + Duration::from_secs(2))
            .await
            .unwrap()
    }

    /// The whole answer: its text, its usage, and the error that ended it, if one did.
    async fn read(answer: &mut ChatAnswer<'_>) -> (String, Option<TokenUsage>, Option<ChatError>) {
        let (mut text, mut usage) = (String::new(), None);
        while let Some(piece) = answer.next().await {
            match piece {
                Ok(ChatPiece::Text(t)) => text.push_str(&t),
                Ok(ChatPiece::Usage(u)) => usage = Some(u),
                Ok(ChatPiece::ToolCall(call)) => panic!("a plain chat made a call: {call:?}"),
                Err(e) => return (text, usage, Some(e)),
            }
        }
        (text, usage, None)
    }

    #[tokio::test]
    async fn the_named_provider_or_model_answers_and_unknown_names_list_what_exists() {
        let mut pool = Pool::new();
        pool.add(
            Arc::new(Talker::new("first", "qwen", &["from ", "first"])),
            placement(1, 2),
            false,
        );
        pool.add(
            Arc::new(Talker::new("second", "llama:latest", &["from ", "second"])),
            placement(2, 2),
            false,
        );
        let messages = question();

        let mut answer = pool.chat(ask(&messages)).unwrap();
        assert_eq!(answer.provider(), Some(("first", "qwen")));
        let (text, usage, error) = read(&mut answer).await;
        assert_eq!(text, "from first");
        assert_eq!(
            usage,
            Some(TokenUsage {
                input: 7,
                output: 2
            })
        );
        assert!(error.is_none());
        assert_eq!(answer.provider(), Some(("first", "qwen")), "who answered");

        let by_model = pool.chat(ChatAsk {
            model: Some("llama"),
            ..ask(&messages)
        });
        assert_eq!(read(&mut by_model.unwrap()).await.0, "from second");
        let by_name = pool.chat(ChatAsk {
            provider: Some("second"),
            ..ask(&messages)
        });
        assert_eq!(read(&mut by_name.unwrap()).await.0, "from second");

        let error = pool
            .chat(ChatAsk {
                model: Some("gpt-5"),
                ..ask(&messages)
            })
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "no provider serves model \"gpt-5\": the models are qwen (first), llama:latest (second)"
        );
        let error = pool
            .chat(ChatAsk {
                provider: Some("third"),
                ..ask(&messages)
            })
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "no provider is named \"third\": the chat providers are first, second"
        );
        let error = pool
            .chat(ChatAsk {
                provider: Some("first"),
                model: Some("llama"),
                ..ask(&messages)
            })
            .unwrap_err();
        assert!(matches!(error, ChatError::UnknownModel { .. }), "{error}");
    }

    #[tokio::test]
    async fn a_pool_without_a_chat_provider_says_how_to_add_one() {
        let mut pool = Pool::new();
        pool.add_offline(
            Arc::new(crate::OfflineProvider::new(&Default::default())),
            None,
            true,
        );
        let messages = question();
        let error = pool.chat(ask(&messages)).unwrap_err();
        assert!(matches!(error, ChatError::NoChatProvider));
        assert!(error.to_string().contains("[providers.local]"), "{error}");
        let error = pool
            .chat(ChatAsk {
                provider: Some("offline"),
                ..ask(&messages)
            })
            .unwrap_err();
        assert!(matches!(error, ChatError::CannotChat { .. }), "{error}");
    }

    #[tokio::test]
    async fn a_failure_before_the_first_words_falls_back_and_one_after_them_ends_the_answer() {
        let mut refuses = Talker::new("refuses", "m", &["never"]);
        refuses.fail_after = Some(0);
        let mut breaks = Talker::new("breaks", "m", &["never"]);
        breaks.fail_after = Some(0);
        let steady = Talker::new("steady", "m", &["all ", "of ", "it"]);
        let mut pool = Pool::new();
        pool.add(Arc::new(refuses), placement(1, 2), false);
        pool.add(Arc::new(breaks), placement(2, 2), false);
        pool.add(Arc::new(steady), placement(3, 2), false);
        let messages = question();
        let mut answer = pool.chat(ask(&messages)).unwrap();
        let (text, _, error) = read(&mut answer).await;
        assert_eq!(text, "all of it");
        assert!(error.is_none());
        assert_eq!(answer.provider(), Some(("steady", "m")));

        // Mid-answer: the words said stand, and the provider's own words end the answer.
        let mut stumbles = Talker::new("stumbles", "m", &["half ", "an ", "answer"]);
        stumbles.fail_after = Some(2);
        let backup = Arc::new(Talker::new("backup", "m", &["other"]));
        let mut pool = Pool::new();
        pool.add(Arc::new(stumbles), placement(1, 2), false);
        pool.add(backup.clone(), placement(2, 2), false);
        let (text, _, error) = read(&mut pool.chat(ask(&messages)).unwrap()).await;
        assert_eq!(text, "half an ");
        let error = error.expect("the answer ends with an error");
        assert_eq!(
            error.to_string(),
            "stumbles stopped mid-answer: http://x/v1/messages reported an error mid-answer: overloaded_error: Overloaded"
        );
        assert_eq!(
            backup.started.load(Ordering::Relaxed),
            0,
            "no second answer"
        );

        // Every one fails: each reason is named.
        let mut alone = Talker::new("alone", "m", &[]);
        alone.fail_after = Some(0);
        let mut pool = Pool::new();
        pool.add(Arc::new(alone), placement(1, 2), false);
        let (_, _, error) = read(&mut pool.chat(ask(&messages)).unwrap()).await;
        let text = error.unwrap().to_string();
        assert!(
            text.starts_with("no provider could answer: alone: "),
            "{text}"
        );
    }

    #[tokio::test]
    async fn chats_leave_the_reserved_slot_to_completions_and_dropping_one_stops_it() {
        let mut slow = Talker::new("local", "m", &["a", "b", "c", "d", "e", "f"]);
        slow.pace = Duration::from_millis(50);
        let dropped = slow.dropped.clone();
        let slow = Arc::new(slow);
        let mut pool = Pool::new();
        pool.add(slow.clone(), placement(1, 2), false);
        let messages = question();
        let mut first = pool.chat(ask(&messages)).unwrap();
        assert!(matches!(first.next().await, Some(Ok(ChatPiece::Text(_)))));
        // A second chat waits: the other slot is the completions'.
        let mut second = pool.chat(ask(&messages)).unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(150), second.next()).await;
        assert!(waited.is_err(), "the second chat waited for a slot");
        // A completion does not.
        let started = Instant::now();
        let answer = keystroke(&pool).await;
        assert_eq!(answer.provider, "local");
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "{:?}",
            started.elapsed()
        );
        // Dropping the first answer drops its stream and gives its slot to the second.
        drop(first);
        assert_eq!(dropped.load(Ordering::Relaxed), 1);
        let (text, _, _) = read(&mut second).await;
        assert_eq!(text, "abcdef");
    }

    #[tokio::test]
    async fn a_chat_gives_way_to_a_completion_and_goes_on_from_where_it_was() {
        let words = [
            "The",
            " lighthouse",
            " keeper",
            " climbed",
            " the",
            " stairs",
            " at",
            " dusk",
            ".",
        ];
        let mut local = Talker::new("local", "m", &words);
        local.pace = Duration::from_millis(30);
        local.completing = Duration::from_millis(100);
        let dropped = local.dropped.clone();
        let local = Arc::new(local);
        let pool = yielding_pool(local.clone(), 2);
        let messages = question();
        let mut answer = pool.chat(ask(&messages)).unwrap();
        let mut text = String::new();
        for _ in 0..3 {
            if let Some(Ok(ChatPiece::Text(t))) = answer.next().await {
                text.push_str(&t);
            }
        }
        assert_eq!(text, "The lighthouse keeper");
        // A completion arrives: the chat's request is dropped while it runs.
        let completion = tokio::spawn({
            let pool = pool.clone();
            async move {
                let started = Instant::now();
                let answer = keystroke(&pool).await;
                (answer, started.elapsed())
            }
        });
        let (rest, _, error) = read(&mut answer).await;
        assert!(error.is_none(), "{error:?}");
        let (completed, took) = completion.await.unwrap();
        assert_eq!(completed.provider, "local");
        assert!(took < Duration::from_millis(1000), "{took:?}");
        text.push_str(&rest);
        // Every word once, in order.
        assert_eq!(text, words.concat());
        assert_eq!(answer.yields(), 1);
        assert_eq!(
            dropped.load(Ordering::Relaxed),
            1,
            "the first request was dropped"
        );
        // It went on from what it had said: the second request ends with it as the
        // assistant's words.
        let asked = local.asked.lock().unwrap();
        assert_eq!(asked.len(), 2);
        let last = asked[1].last().unwrap();
        assert_eq!(last.role, Role::Assistant);
        assert!(
            words.concat().starts_with(&last.content)
                && last.content.starts_with("The lighthouse keeper"),
            "{:?}",
            last.content
        );
    }

    /// A server with a slot for each (llama.cpp's `total_slots`): the chat goes on beside the
    /// completion.
    #[tokio::test]
    async fn a_chat_keeps_its_place_on_a_server_with_room_for_both() {
        let words = ["a", "b", "c", "d", "e", "f", "g", "h"];
        let mut local = Talker::new("local", "m", &words);
        local.pace = Duration::from_millis(30);
        local.completing = Duration::from_millis(60);
        local.slots = Some(2);
        let dropped = local.dropped.clone();
        let pool = yielding_pool(Arc::new(local), 2);
        let messages = question();
        let mut answer = pool.chat(ask(&messages)).unwrap();
        assert!(matches!(answer.next().await, Some(Ok(ChatPiece::Text(_)))));
        let completion = tokio::spawn({
            let pool = pool.clone();
            async move { keystroke(&pool).await }
        });
        let (rest, _, error) = read(&mut answer).await;
        assert!(error.is_none());
        assert_eq!(format!("a{rest}"), words.concat());
        assert_eq!(completion.await.unwrap().provider, "local");
        assert_eq!(answer.yields(), 0);
        assert_eq!(dropped.load(Ordering::Relaxed), 0);
    }

    /// With one slot (`max_in_flight = 1`), a chat that gives way gives the slot back: the
    /// completion is not left waiting for the chat that waits for it. And the whitespace a
    /// resumed answer starts with is dropped a character at a time (U+3000 after a newline).
    #[tokio::test]
    async fn a_chat_holding_the_only_slot_gives_it_to_the_completion() {
        let words = ["Line one.\n", "\u{3000}Next", " part."];
        let mut local = Talker::new("local", "m", &words);
        local.pace = Duration::from_millis(40);
        local.completing = Duration::from_millis(50);
        let local = Arc::new(local);
        let pool = yielding_pool(local.clone(), 1);
        let messages = question();
        let mut answer = pool.chat(ask(&messages)).unwrap();
        let Some(Ok(ChatPiece::Text(first))) = answer.next().await else {
            panic!("a first piece");
        };
        let completion = tokio::spawn({
            let pool = pool.clone();
            async move { keystroke(&pool).await }
        });
        let (rest, _, error) = read(&mut answer).await;
        assert!(error.is_none(), "{error:?}");
        let done = tokio::time::timeout(Duration::from_secs(2), completion)
            .await
            .expect("the completion got the slot")
            .unwrap();
        assert_eq!(done.provider, "local");
        assert_eq!(answer.yields(), 1);
        assert_eq!(format!("{first}{rest}"), "Line one.\nNext part.");
        let asked = local.asked.lock().unwrap();
        assert_eq!(asked[1].last().unwrap().content, "Line one.");
    }
}
