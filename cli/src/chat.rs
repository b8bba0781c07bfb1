//! `reaper chat`: one question answered as it streams, or a conversation at a prompt.

use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use reaper_client::schema::{ChatChunk, ChatMessage, ChatRequest, Role};
use reaper_client::{CallOptions, Client, Code, Error, Status};
use tokio::signal::unix::{signal, Signal, SignalKind};

/// What `reaper chat` was asked.
#[derive(Debug, Clone)]
pub struct ChatArgs {
    /// The question; `None` for a conversation at a prompt.
    pub question: Option<String>,
    /// The model to answer with.
    pub model: Option<String>,
    /// The provider to answer with.
    pub provider: Option<String>,
    /// An instruction for the model, sent first as a system message.
    pub system: Option<String>,
    /// Longest answer, in tokens.
    pub max_tokens: Option<u32>,
    /// One JSON object per chunk instead of text.
    pub json: bool,
    /// Each answer's deadline.
    pub deadline: Option<Duration>,
}

/// How one answer ended.
enum Ending {
    /// Complete: the text, for the conversation's history.
    Answered(String),
    /// Ctrl-C: abandoned (the daemon was told, and the model stopped).
    Interrupted,
}

/// Ctrl-C, caught from now on: one stream for the whole command, so that a Ctrl-C pressed at
/// any moment (the answer opening, or between two answers) is seen, never lost.
fn interrupts() -> Result<Signal, Error> {
    signal(SignalKind::interrupt()).map_err(|e| {
        Error::Status(Status::new(
            Code::Internal,
            format!("cannot catch Ctrl-C: {e}"),
        ))
    })
}

/// Answers one question, printing the answer as it comes.
pub async fn ask_once(client: &Client, args: &ChatArgs, question: String) -> Result<(), Error> {
    let mut interrupts = interrupts()?;
    let mut messages = first_messages(args);
    messages.push(message(Role::User, question));
    match answer(client, args, messages, &mut interrupts).await? {
        Ending::Answered(_) => Ok(()),
        Ending::Interrupted => Err(Error::Status(Status::new(
            Code::Cancelled,
            "interrupted (Ctrl-C)",
        ))),
    }
}

/// A conversation: each line read is a question, answered with everything said before it.
/// Ctrl-C stops the answer being written, not the conversation; Ctrl-D (end of input) or
/// `/exit` ends it; `/clear` forgets what was said.
pub async fn converse(client: &Client, args: &ChatArgs) -> Result<(), Error> {
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("reaper chat: ask away. Ctrl-C stops an answer, Ctrl-D or /exit ends, /clear forgets the conversation.");
    }
    let mut interrupts = interrupts()?;
    let mut lines = stdin_lines();
    let mut history = first_messages(args);
    loop {
        if interactive {
            eprint!("> ");
            let _ = std::io::stderr().flush();
        }
        let line = tokio::select! {
            line = lines.recv() => line,
            _ = interrupts.recv() => None,
        };
        let Some(line) = line else {
            if interactive {
                eprintln!();
            }
            return Ok(());
        };
        let question = line.trim();
        match question {
            "" => continue,
            "/exit" | "/quit" => return Ok(()),
            "/clear" => {
                history = first_messages(args);
                eprintln!("(conversation forgotten)");
                continue;
            }
            _ => {}
        }
        let mut asked = history.clone();
        asked.push(message(Role::User, question.to_owned()));
        match answer(client, args, asked.clone(), &mut interrupts).await {
            Ok(Ending::Answered(text)) => {
                history = asked;
                history.push(message(Role::Assistant, text));
            }
            // Neither the question nor the half answer is kept: ask again, or something else.
            Ok(Ending::Interrupted) => eprintln!("(stopped; not kept in the conversation)"),
            Err(error) => {
                let status = error.status();
                eprintln!("{}: {}", status.code.name(), status.message);
            }
        }
    }
}

/// Streams one answer to standard output; Ctrl-C abandons it.
async fn answer(
    client: &Client,
    args: &ChatArgs,
    messages: Vec<ChatMessage>,
    interrupts: &mut Signal,
) -> Result<Ending, Error> {
    let request = ChatRequest {
        messages,
        model: args.model.clone(),
        max_tokens: args.max_tokens,
        provider: args.provider.clone(),
    };
    let started = Instant::now();
    let call = CallOptions {
        deadline: args.deadline,
    };
    let mut chunks = tokio::select! {
        opened = client.chat(&request, call) => opened?,
        _ = interrupts.recv() => return Ok(Ending::Interrupted),
    };
    let mut text = String::new();
    let mut first_words = None;
    let mut out = std::io::stdout().lock();
    loop {
        let next = tokio::select! {
            next = chunks.next() => next,
            _ = interrupts.recv() => {
                // Dropping the stream resets the call: the daemon drops the model's request.
                drop(chunks);
                if !args.json {
                    let _ = writeln!(out);
                }
                return Ok(Ending::Interrupted);
            }
        };
        let Some(chunk) = next else { break };
        let chunk: ChatChunk = chunk?;
        if first_words.is_none() && !chunk.delta.is_empty() {
            first_words = Some(started.elapsed());
        }
        text.push_str(&chunk.delta);
        if args.json {
            let _ = writeln!(out, "{}", serde_json::to_string(&chunk).unwrap_or_default());
        } else {
            let _ = write!(out, "{}", chunk.delta);
        }
        let _ = out.flush();
        if chunk.done && !args.json {
            let _ = writeln!(out);
            eprintln!("{}", summary(&chunk, first_words, started.elapsed()));
        }
    }
    Ok(Ending::Answered(text))
}

/// `-- local (smollm2): 33 + 12 tokens, first words in 180 ms, 420 ms in all`.
fn summary(last: &ChatChunk, first_words: Option<Duration>, all: Duration) -> String {
    let who = match (&last.provider, &last.model) {
        (Some(provider), Some(model)) => format!("{provider} ({model})"),
        (Some(provider), None) => provider.clone(),
        _ => "?".to_owned(),
    };
    let tokens = last.usage.map_or(String::new(), |u| {
        format!("{} + {} tokens, ", u.input_tokens, u.output_tokens)
    });
    let first = first_words.map_or(String::new(), |d| {
        format!("first words in {} ms, ", d.as_millis())
    });
    format!("-- {who}: {tokens}{first}{} ms in all", all.as_millis())
}

/// The system instruction, if one was given.
fn first_messages(args: &ChatArgs) -> Vec<ChatMessage> {
    args.system
        .iter()
        .map(|s| message(Role::System, s.clone()))
        .collect()
}

fn message(role: Role, content: String) -> ChatMessage {
    ChatMessage {
        role,
        content,
        timestamp: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
    }
}

/// Standard input's lines, read on a thread of their own (a blocking read must not hold up
/// Ctrl-C or the answer being printed).
/// Lines of standard input, read on a thread of their own; the channel closes at its end.
pub(crate) fn stdin_lines() -> tokio::sync::mpsc::Receiver<String> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.blocking_send(line).is_err() {
                    break;
                }
            }
        });
    if let Err(error) = spawned {
        eprintln!("reaper: cannot read standard input: {error}");
    }
    rx
}
