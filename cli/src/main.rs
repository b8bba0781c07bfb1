//! `reaper`: the command-line client of reaperd, and `reaper lsp`, the bridge for LSP editors.

mod agent;
mod chat;
mod mcp;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use reaper_client::schema::{
    CompletionRequest, CompletionResponse, HealthResponse, ProviderListResponse,
};
use reaper_client::{CallOptions, Client, ClientOptions, Code, Encoding, Error, Status};

/// Talk to a running reaperd: check its health, list its providers, complete code, chat, run
/// agent tasks.
///
/// The daemon's address, certificate and token are read from its state directory
/// ($REAPER_STATE_DIR, else $XDG_RUNTIME_DIR/reaper, else ~/.local/state/reaper). On failure the
/// status name and message go to standard error and the exit code is non-zero.
#[derive(Debug, Parser)]
#[command(name = "reaper", version, about, long_about)]
struct Args {
    /// Daemon address; default: the `endpoint` file in the state directory.
    #[arg(long, global = true, value_name = "ADDR:PORT")]
    addr: Option<SocketAddr>,
    /// The daemon's state directory.
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Message encoding on the wire.
    #[arg(long, global = true, default_value = "rkyv", value_parser = ["rkyv", "json"])]
    encoding: String,
    /// Give up after this many milliseconds: the whole command, finding and connecting to the
    /// daemon included (for `lsp`: each completion's deadline).
    #[arg(long, global = true, value_name = "MS")]
    timeout_ms: Option<u64>,
    /// Print one JSON object per line instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show whether the daemon is serving, its version, uptime, call counts and latency.
    Health,
    /// List the providers: name, kind, model, status (available, unavailable, rate_limited,
    /// checking, disabled), measured latency, credentials, and why when not plainly available.
    Providers,
    /// Complete the text at a cursor: the prefix is what comes before it, the suffix what comes
    /// after. Prints the completion (and, with --json, its confidence, provider, latency and
    /// whether it came from the cache).
    Complete {
        /// Language of the buffer, e.g. rust.
        #[arg(long)]
        language: String,
        /// The file being edited (its repository is what the offline provider learns from).
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        /// Text before the cursor.
        #[arg(
            long,
            required_unless_present = "prefix_file",
            conflicts_with = "prefix_file"
        )]
        prefix: Option<String>,
        /// Read the text before the cursor from a file.
        #[arg(long, value_name = "PATH")]
        prefix_file: Option<PathBuf>,
        /// Text after the cursor.
        #[arg(long, conflicts_with = "suffix_file")]
        suffix: Option<String>,
        /// Read the text after the cursor from a file.
        #[arg(long, value_name = "PATH")]
        suffix_file: Option<PathBuf>,
    },
    /// Ask a question and print the answer as it streams; without one, a conversation at a
    /// prompt (each line a question, answered with what was said before; Ctrl-C stops the
    /// answer being written, Ctrl-D or /exit ends, /clear forgets). The answer comes from the
    /// providers in reaper.toml (see `reaper providers`); --json prints each chunk as the
    /// daemon sends it, the last with the provider, model and tokens used.
    Chat {
        /// The question (omit it for a conversation).
        question: Option<String>,
        /// Answer with this model (a provider whose chat model it is answers).
        #[arg(long)]
        model: Option<String>,
        /// Answer with this provider (its name in reaper.toml).
        #[arg(long)]
        provider: Option<String>,
        /// An instruction for the model, sent before the conversation.
        #[arg(long, value_name = "TEXT")]
        system: Option<String>,
        /// Longest answer, in tokens (default 1024).
        #[arg(long, value_name = "N")]
        max_tokens: Option<u32>,
    },
    /// Serve an editor over the Language Server Protocol on stdin/stdout: reaper's completions
    /// as `textDocument/inlineCompletion` (LSP 3.18). Connects to the running reaperd, or
    /// starts one (exactly one, however many editors start at once) and reconnects if it
    /// restarts. Logs go to a file (default: lsp.log in the state directory), never stdout.
    /// See docs/editors.md for Neovim, VS Code, Emacs, Helix and Zed.
    Lsp(LspArgs),
    /// Run a task in a working directory: the daemon's agent reads, searches, edits files
    /// (and runs allowed commands, if [agent.commands] enables them) through a model that
    /// calls tools, showing each step as it goes. Steps that change something ask first
    /// (y/N on standard input; anything but y or yes denies; --yes approves all); what is
    /// refused is told to the model. Ctrl-C cancels the task. Every change is undoable:
    /// `reaper agent undo TASK_ID` (the id is printed at the start). --json prints one
    /// object per step update.
    Agent(AgentCommandArgs),
    /// MCP servers of reaper.toml: `reaper mcp list` starts each one, shows its state,
    /// version and tools, and stops it.
    Mcp {
        #[command(subcommand)]
        command: McpCommand,
    },
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct AgentCommandArgs {
    #[command(subcommand)]
    command: Option<AgentCommand>,
    /// What to do, e.g. "rename retry_count to max_retries in src/".
    #[arg(required = true)]
    instruction: Option<String>,
    /// The task's working directory: it reads and writes nothing outside it (default: the
    /// current directory).
    #[arg(long, value_name = "DIR")]
    cwd: Option<PathBuf>,
    /// Approve every step that asks (steps [agent.policy] denies stay denied).
    #[arg(long)]
    yes: bool,
}

#[derive(Debug, Subcommand)]
enum AgentCommand {
    /// Put back every file task TASK_ID changed, and remove those it created; refused,
    /// changing nothing, if any of them changed since. Needs no daemon.
    Undo {
        /// The task's id, as `reaper agent` printed it.
        task_id: String,
    },
}

#[derive(Debug, Subcommand)]
enum McpCommand {
    /// Each enabled server: its state, version, protocol and tools.
    List,
}

#[derive(Debug, clap::Args)]
struct LspArgs {
    /// Never start reaperd: fail each request until one runs.
    #[arg(long)]
    no_start: bool,
    /// The reaperd to start when none runs (default: beside this binary, else on PATH).
    #[arg(long, value_name = "PATH")]
    reaperd: Option<PathBuf>,
    /// Log file (default: lsp.log in the state directory).
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
    /// Log level (error, warn, info, debug); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Bytes of text before the cursor sent with each completion.
    #[arg(long, default_value_t = 16 * 1024)]
    prefix_bytes: usize,
    /// Bytes of text after the cursor sent with each completion.
    #[arg(long, default_value_t = 4 * 1024)]
    suffix_bytes: usize,
    /// Answers less sure than this (0 to 1) are not shown.
    #[arg(long, default_value_t = 0.5)]
    min_confidence: f32,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Command::Lsp(lsp) = &args.command {
        return serve_lsp(&args, lsp);
    }
    if let Command::Agent(AgentCommandArgs {
        command: Some(AgentCommand::Undo { task_id }),
        ..
    }) = &args.command
    {
        let state_dir = reaper_lsp::resolve_state_dir(args.state_dir.clone());
        return finish(agent::undo(&state_dir, task_id, args.json));
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("reaper: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    // A conversation runs as long as the user talks: --timeout-ms bounds each answer instead.
    let conversation = matches!(args.command, Command::Chat { question: None, .. });
    let limit = args.timeout_ms.filter(|_| !conversation);
    let outcome = runtime.block_on(async move {
        match limit {
            // The call's own deadline is the same: this bounds what comes before it (connect
            // attempts with their backoff) and the close after it.
            Some(ms) => tokio::time::timeout(Duration::from_millis(ms), run(args))
                .await
                .unwrap_or(Err(Error::DeadlineExceeded(ms))),
            None => run(args).await,
        }
    });
    finish(outcome)
}

/// The exit: 0, or the status on standard error and 2.
fn finish(outcome: Result<(), Error>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let status = error.status();
            eprintln!("{}: {}", status.code.name(), status.message);
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<(), Error> {
    if let Command::Mcp {
        command: McpCommand::List,
    } = &args.command
    {
        return mcp::list(args.json).await;
    }
    let mut options = ClientOptions::discover(args.state_dir, args.addr)?;
    options.encoding = args.encoding.parse().unwrap_or(Encoding::Rkyv);
    options.default_deadline = args.timeout_ms.map(Duration::from_millis);
    // A closed port means the daemon is gone (a running one keeps it open; a stopping one
    // removes its endpoint file): say so now rather than after the backoff.
    options.retry_refused = false;
    // Read inputs before connecting, so a bad file name fails fast.
    let request = match &args.command {
        Command::Complete {
            language,
            file,
            prefix,
            prefix_file,
            suffix,
            suffix_file,
        } => Some(CompletionRequest {
            prefix: text_arg(prefix, prefix_file)?,
            suffix: text_arg(suffix, suffix_file)?,
            language: language.clone(),
            file_path: file.as_deref().map(absolute),
            context: None,
        }),
        _ => None,
    };
    let agent = match &args.command {
        Command::Agent(a) => {
            let cwd = match &a.cwd {
                Some(dir) => dir.clone(),
                None => std::env::current_dir().map_err(|e| {
                    Error::Status(Status::new(
                        Code::FailedPrecondition,
                        format!("no current directory: {e}"),
                    ))
                })?,
            };
            // The daemon runs elsewhere: it needs the directory's real, absolute path.
            let cwd = cwd.canonicalize().map_err(|e| {
                Error::Status(Status::new(
                    Code::InvalidArgument,
                    format!("--cwd {}: {e}", cwd.display()),
                ))
            })?;
            Some(agent::AgentArgs {
                instruction: a.instruction.clone().unwrap_or_default(),
                cwd,
                yes: a.yes,
                json: args.json,
                deadline: args.timeout_ms.map(Duration::from_millis),
            })
        }
        _ => None,
    };
    let client = Client::connect(options).await?;
    let result = match (&args.command, request) {
        (Command::Complete { .. }, Some(request)) => client
            .complete(&request, CallOptions::default())
            .await
            .map(|c| print_completion(&c, args.json)),
        (
            Command::Chat {
                question,
                model,
                provider,
                system,
                max_tokens,
            },
            _,
        ) => {
            let chat = chat::ChatArgs {
                question: question.clone(),
                model: model.clone(),
                provider: provider.clone(),
                system: system.clone(),
                max_tokens: *max_tokens,
                json: args.json,
                deadline: args.timeout_ms.map(Duration::from_millis),
            };
            match &chat.question {
                Some(question) => chat::ask_once(&client, &chat, question.clone()).await,
                None => chat::converse(&client, &chat).await,
            }
        }
        (Command::Agent(_), _) => match &agent {
            Some(agent) => agent::run(&client, agent).await,
            None => Ok(()),
        },
        (Command::Providers, _) => client
            .providers()
            .await
            .map(|p| print_providers(&p, args.json)),
        _ => client.health().await.map(|h| print_health(&h, args.json)),
    };
    client.close().await;
    result
}

/// `reaper lsp`: the editor on stdin/stdout until it exits.
fn serve_lsp(args: &Args, lsp: &LspArgs) -> ExitCode {
    let state_dir = reaper_lsp::resolve_state_dir(args.state_dir.clone());
    let log_file = lsp
        .log_file
        .clone()
        .unwrap_or_else(|| state_dir.join("lsp.log"));
    if let Err(error) = reaper_lsp::log_to(&log_file, &lsp.log_level) {
        // Standard error is the editor's log of this server; stdout is the protocol.
        eprintln!(
            "reaper lsp: cannot write the log {}: {error}",
            log_file.display()
        );
    }
    let mut options = reaper_lsp::BridgeOptions::default();
    options.daemon.state_dir = Some(state_dir);
    options.daemon.reaperd = lsp.reaperd.clone();
    options.daemon.start = !lsp.no_start;
    options.prefix_bytes = lsp.prefix_bytes;
    options.suffix_bytes = lsp.suffix_bytes;
    options.min_confidence = lsp.min_confidence;
    if let Some(ms) = args.timeout_ms {
        options.deadline = Duration::from_millis(ms);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("reaper lsp: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    let input = std::io::BufReader::new(std::io::stdin());
    let ending = runtime.block_on(reaper_lsp::serve(input, std::io::stdout(), options));
    // The completion tasks and the daemon's connection are not waited for: the editor has
    // been answered and is gone.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match ending {
        reaper_lsp::Ending::Clean => ExitCode::SUCCESS,
        reaper_lsp::Ending::Abrupt => ExitCode::FAILURE,
    }
}

fn print_health(health: &HealthResponse, json: bool) {
    if json {
        println!("{}", serde_json::to_string(health).unwrap_or_default());
        return;
    }
    println!(
        "reaperd {}: {}, up {}s, {} connection(s)",
        health.version,
        wire_name(&health.status),
        health.uptime_s,
        health.connections
    );
    println!(
        "calls: {} ({} failed, error rate {:.2}%)",
        health.requests,
        health.errors,
        health.error_rate * 100.0
    );
    let l = &health.latency;
    println!(
        "latency: p50 {} µs, p90 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
        l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us
    );
    for calls in &health.calls {
        println!(
            "  {:<28} served {:>8}  failed {:>6}",
            calls.method, calls.served, calls.failed
        );
    }
    for p in &health.providers {
        println!(
            "  provider {:<19} answered {:>6}  errors {:>4}  cancelled {:>4}  hedged {:>4}  p50 {:.1} ms  p95 {:.1} ms{}",
            p.name,
            p.answered,
            p.errors,
            p.cancelled,
            p.hedged,
            p.p50_us as f64 / 1000.0,
            p.p95_us as f64 / 1000.0,
            if p.chats + p.chat_yields > 0 {
                format!("  chats {} (gave way to completions {}x)", p.chats, p.chat_yields)
            } else {
                String::new()
            }
        );
    }
    let b = &health.budgets;
    println!(
        "budgets: requests arriving {} of {} KiB, handshakes {} of {}, indexes {} of {} MiB ({} workspace(s)), QUIC window per connection {} KiB ({} KiB without the token)",
        b.buffered_request_bytes / 1024,
        b.max_buffered_requests / 1024,
        b.handshakes,
        b.max_handshakes,
        b.index_bytes / (1024 * 1024),
        b.max_index_bytes / (1024 * 1024),
        b.workspaces,
        b.connection_window / 1024,
        b.unauthenticated_window / 1024
    );
    let f = &health.feedback;
    if f.shown + f.accepted + f.rejected > 0 {
        // A rate needs what was shown: editors that only run the accept command (Neovim,
        // VS Code's client, lsp-mode) report acceptances and nothing to divide them by.
        let rate = if f.shown > 0 {
            format!(
                "{:.1}% of shown",
                f.accepted as f64 * 100.0 / f.shown as f64
            )
        } else {
            "no rate: no editor reported what it showed".to_owned()
        };
        println!(
            "editors: shown {}, accepted {} ({rate}; {} characters kept), rejected {}",
            f.shown, f.accepted, f.accepted_chars, f.rejected
        );
    }
}

/// Text given inline or in a file; empty when neither.
fn text_arg(inline: &Option<String>, file: &Option<PathBuf>) -> Result<String, Error> {
    match (inline, file) {
        (Some(text), _) => Ok(text.clone()),
        (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
            Error::Status(Status::new(
                Code::InvalidArgument,
                format!("cannot read {}: {e}", path.display()),
            ))
        }),
        (None, None) => Ok(String::new()),
    }
}

/// The daemon needs absolute paths: it runs elsewhere.
fn absolute(path: &std::path::Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

fn print_completion(c: &CompletionResponse, json: bool) {
    if json {
        println!("{}", serde_json::to_string(c).unwrap_or_default());
        return;
    }
    println!("{}", c.completion);
    eprintln!(
        "-- {}, confidence {:.2}, {} ms{}",
        c.provider,
        c.confidence,
        c.latency_ms,
        if c.cached { ", cached" } else { "" }
    );
}

fn print_providers(list: &ProviderListResponse, json: bool) {
    if json {
        println!("{}", serde_json::to_string(list).unwrap_or_default());
        return;
    }
    if list.providers.is_empty() {
        println!("no providers configured");
        return;
    }
    for p in &list.providers {
        let model = if p.model.is_empty() {
            "-"
        } else {
            p.model.as_str()
        };
        println!(
            "{:<12} {:<10} {:<24} {:<12} {:>6} ms  {:<14}{}",
            p.name,
            p.kind,
            model,
            wire_name(&p.status),
            p.latency_ms,
            wire_name(&p.auth_status),
            p.message
                .as_deref()
                .map_or(String::new(), |m| format!("  {m}")),
        );
    }
}

/// An enum's name as the JSON encoding spells it (`rate_limited`, `needs_auth`…).
fn wire_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => "?".to_owned(),
    }
}
