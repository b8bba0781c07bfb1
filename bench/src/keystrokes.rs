//! `reaper-bench keystrokes`: a person typing (issue 9).
//!
//! Replays typing a region of a real Rust file the model never saw, key by key at a human
//! pace, asking for a completion at each key, against a real llama.cpp server (xllamacpp,
//! SmolLM2-135M-Instruct, from the test peers' venv). Editors in one run, one after the other
//! on the same server, with the same keys:
//!
//! - `reaper-ctx`: through a reaperd this tool starts with `[completion] context_bytes` at
//!   its default (repository context on), llama.cpp as `kind = "openai"` and the offline
//!   provider as the defaults have it (on, last resort). A request at every key, no debounce:
//!   the daemon supersedes the call in flight for the same file.
//! - `reaper-no-ctx`: the same with `context_bytes = 0` (the model sees only the file).
//! - `direct`: the way llama.vim/Continue-style plugins talk to llama.cpp today: each key
//!   cancels the request in flight (closes its connection) and restarts a 100 ms debounce,
//!   after which a new connection POSTs a streamed `/v1/completions` with the prompt reaperd's
//!   provider sends when `/infill` is unavailable (SmolLM2 has no FIM tokens: the last 6 KiB
//!   before the cursor, temperature 0.1, 64 tokens, stop at a blank line). No cache.
//!
//! **What is typed.** A file of this repository (written in 2026, after SmolLM2's training;
//! `providers/src/pool.rs` by default). The editor is in the middle of the file: the lines of
//! a region (`--chars` bytes from the start of `--line`, to the end of a line) are
//! typed, and the text after the region already exists, so each request's prefix is the file
//! up to the cursor and its suffix is the rest of the file after the region. A newline key
//! also types the next line's indentation, as auto-indent does. The workspace is a temporary
//! copy of the file's repository (`.gitignore` respected) WITHOUT the typed file, with a
//! `.git` directory so it is the file's git root; requests name the typed file's path inside
//! it. The offline index and the repository context see that copy.
//!
//! **The model alone, same points** (`--quality-points`, 60): the replay mixes speed and
//! quality (a better answer that comes late is never seen), so afterwards the model is asked
//! at that many keys spread evenly over the script, one at a time, each answer awaited (60 s
//! at most), the offline model off, once with repository context and once without: exact
//! lines and accepted characters at the same points.
//!
//! **Pace.** `--ms-per-key` (80) ±30 % jitter, `--newline-pause-ms` (400) after each
//! newline, `--think-pause-ms` (1000) every 40–80 keys; all from `--seed`, so every run types
//! the same keys at the same times.
//!
//! **Measured.** A counting loopback proxy (`proxy.rs`) sits between both editors and
//! llama.cpp and logs every HTTP exchange with its timing and the tokens it streamed;
//! llama.cpp's `/metrics` counters are read before and after each run.
//!
//! - *ghost text*: a key whose answer came back before the next key (for the last key,
//!   within 2 s), non-empty, at confidence ≥ `--min-confidence` (0.5: the editor of the design
//!   note hides answers below it; the direct client's answers have no confidence and count).
//!   *time to ghost text* p50/p95: from the key press to that answer, over those keys.
//! - *overtaken*: keys whose answer had not come back when the next key came (superseded by
//!   the daemon, cancelled by the plugin, or late).
//! - *requests that reached the model*: `/v1/completions`/`/infill` exchanges through the
//!   proxy, except `/infill`'s 501 (no FIM tokens); how many were cancelled before their end.
//! - *tokens generated*: llama.cpp's `tokens_predicted_total` delta; *tokens streamed*: events
//!   with text through the proxy (tokens generated after a cancel are in the first, not the
//!   second); *prompt tokens evaluated*: `prompt_tokens_total` delta (not served from
//!   llama.cpp's prompt cache). *Unseen tokens*: tokens streamed in exchanges whose own key did
//!   not show that answer as ghost text (an exchange is matched to the latest key whose last
//!   256 prefix bytes its prompt contains). An answer that arrived late and was shown later
//!   from reaperd's cache or by typing through counts as unseen here; those are counted as
//!   cache hits.
//! - *cache hits* (answers with `cached`) and *typed-through* (the daemon's `Health`
//!   counter: typing the characters a suggestion began with is answered with its rest).
//! - *exact line*: a shown ghost text completes the current line exactly (see
//!   [`script::score`]); *accepted chars*: its length when all of it is what was typed next.
//!   Per key, as if the person had looked at every ghost text; nothing is accepted, so every
//!   run types the same keys.
//! - *daemon overhead*: for each reaper answer that came from the model (not cached), the
//!   client's latency (complete() called → returned) minus its exchange's time at the proxy
//!   (first request byte in → last response byte out): QUIC both ways, the daemon's loop,
//!   the hop to the provider runtime, reqwest, the prompt building and the answer's way back.
//!   The proxy's own relaying is inside the exchange time, so it is not charged to the daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use reaper_client::schema::CompletionRequest;
use reaper_client::{CallOptions, Client, ClientOptions};
use reaper_testkit::{LlamaOptions, LlamaServer};

use crate::progress::Progress;
use crate::reaper::{start_reaperd, stop_reaperd};
use crate::report::histogram;

mod http;
mod proxy;
mod script;
mod typist;

use proxy::{Exchange, Proxy};
use script::{Pace, Script, Workspace};
use typist::KeyResult;

/// How long answers to the last key count as shown.
const LAST_KEY_WAIT: Duration = Duration::from_secs(2);
/// Bytes of a key's prefix that identify it in a prompt.
const KEY_TAIL: usize = 256;
/// Keys before an exchange's start searched for the one it answers.
const MATCH_WINDOW: usize = 64;
/// The name of llama.cpp's provider table in reaperd's config, which answers carry.
const PROVIDER: &str = "llamacpp";
/// The variable the test kit reads the test peers' Python from.
const PYTHON_ENV: &str = "REAPER_TEST_PYTHON";
/// Longest wait for llama.cpp to finish what a run left it.
const IDLE_WAIT: Duration = Duration::from_secs(60);

/// Settings of `reaper-bench keystrokes`.
#[derive(Debug, clap::Args)]
pub struct KeystrokesArgs {
    /// The Rust file whose typing is replayed. Its git repository, minus this file, is the
    /// workspace (copied to a temporary directory).
    #[arg(long, default_value = "providers/src/pool.rs")]
    file: PathBuf,
    /// The line typing starts at (1-based). The default, in providers/src/pool.rs, starts at
    /// its third kilobyte, so the text before the cursor stays within the 6 KiB a model is
    /// shown; deeper in a file see docs/perf.md.
    #[arg(long, default_value_t = 62, value_parser = clap::value_parser!(u64).range(1..))]
    line: u64,
    /// Bytes typed (then on to the end of that line).
    #[arg(long, default_value_t = 1500)]
    chars: usize,
    /// Milliseconds between two keys (each ±30 %, seeded).
    #[arg(long, default_value_t = 80)]
    ms_per_key: u64,
    /// Extra pause after a newline, in milliseconds.
    #[arg(long, default_value_t = 400)]
    newline_pause_ms: u64,
    /// A thinking pause every 40 to 80 keys, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    think_pause_ms: u64,
    /// Seed of the jitter and the pauses.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The direct client's debounce, in milliseconds.
    #[arg(long, default_value_t = 100)]
    debounce_ms: u64,
    /// `[completion] context_bytes` of the reaper-ctx run.
    #[arg(long, default_value_t = 2048)]
    context_bytes: u32,
    /// The provider's `timeout_ms` in reaperd's config.
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
    /// Lowest confidence an editor shows as ghost text.
    #[arg(long, default_value_t = 0.5)]
    min_confidence: f32,
    /// Then, at this many keys spread evenly over the script, ask the model through reaperd
    /// with and without repository context and wait for each answer (no race with the next
    /// key, the offline model off): what context does to the model's answers at the same
    /// points. 0 skips it.
    #[arg(long, default_value_t = 60)]
    quality_points: usize,
    /// Editors to replay, in this order.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Editor::ALL)]
    editors: Vec<Editor>,
    /// Skip the replay: only the model alone at `--quality-points`.
    #[arg(long)]
    no_replay: bool,
    /// The reaperd binary (default: beside this one).
    #[arg(long, value_name = "PATH")]
    reaperd: Option<PathBuf>,
    /// Print one JSON object per editor instead of the table.
    #[arg(long)]
    json: bool,
    /// Write every exchange with llama.cpp as a JSON line here (editor, path, status, start
    /// and duration in ms from the editor's first key, whether it ran to its end, tokens,
    /// the key it answers, prompt length and its first 200 bytes): what to read when a
    /// figure looks wrong.
    #[arg(long, value_name = "FILE")]
    log_exchanges: Option<PathBuf>,
}

/// One editor replaying the keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Editor {
    /// Through reaperd, with repository context.
    ReaperCtx,
    /// Through reaperd, `context_bytes = 0`.
    ReaperNoCtx,
    /// Straight to llama.cpp: debounce, cancel, no cache.
    Direct,
}

impl Editor {
    const ALL: [Editor; 3] = [Editor::ReaperCtx, Editor::ReaperNoCtx, Editor::Direct];

    fn name(self) -> &'static str {
        match self {
            Editor::ReaperCtx => "reaper-ctx",
            Editor::ReaperNoCtx => "reaper-no-ctx",
            Editor::Direct => "direct",
        }
    }
}

impl std::fmt::Display for Editor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Runs the replay for every editor and prints the table (or JSON).
pub fn run(args: &KeystrokesArgs) -> anyhow::Result<()> {
    use_peers_python()?;
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let (workspace, typed_path) = Workspace::copy_without(&args.file)?;
    let pace = Pace {
        ms_per_key: args.ms_per_key,
        newline_pause_ms: args.newline_pause_ms,
        think_pause_ms: args.think_pause_ms,
        seed: args.seed,
    };
    let script = Script::new(
        text,
        args.line as usize,
        args.chars,
        pace,
        typed_path.display().to_string(),
    )?;
    let progress = Progress::new(args.editors.len() as u64, false);
    let first_line = script.text[..script.region.start].lines().count() + 1;
    progress.note(&format!(
        "typing {} bytes of {} from line {first_line} in {} keys over {:.0} s per editor; workspace: {} files, {} KiB",
        script.region.len(),
        args.file.display(),
        script.keys.len(),
        script.duration().as_secs_f64(),
        workspace.files,
        workspace.bytes / 1024,
    ));

    let llama = start_llama()?;
    let upstream: SocketAddr = llama
        .base_url()
        .trim_start_matches("http://")
        .parse()
        .context("llama.cpp's address")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("keystrokes")
        .enable_all()
        .build()?;
    let proxy = runtime.block_on(Proxy::start(upstream))?;
    let rig = Rig {
        args,
        runtime: &runtime,
        proxy: &proxy,
        llama: &llama,
        script: &script,
        workspace: &workspace,
    };
    let mut summaries = Vec::new();
    let editors: &[Editor] = if args.no_replay { &[] } else { &args.editors };
    for &editor in editors {
        progress.note(&format!("{editor}: typing..."));
        let measured = match editor {
            Editor::ReaperCtx => reaper_run(&rig, args.context_bytes),
            Editor::ReaperNoCtx => reaper_run(&rig, 0),
            Editor::Direct => direct_run(&rig),
        }?;
        if let Some(path) = &args.log_exchanges {
            log_exchanges(path, editor, &script, &measured)?;
        }
        let summary = Summary::of(editor, args, &script, &measured);
        progress.note(&summary.brief());
        summaries.push(summary);
    }
    let mut qualities = Vec::new();
    if args.quality_points > 0 {
        for context_bytes in [args.context_bytes, 0] {
            progress.note(&format!(
                "model alone at {} points, context_bytes = {context_bytes}...",
                args.quality_points
            ));
            let quality = quality_run(&rig, context_bytes)?;
            qualities.push((context_bytes, quality));
        }
    }
    drop(proxy);
    drop(runtime);
    drop(llama);
    if args.json {
        for summary in &summaries {
            println!("{}", summary.json());
        }
        for (context_bytes, quality) in &qualities {
            println!("{}", quality.json(*context_bytes));
        }
    } else {
        if !summaries.is_empty() {
            print!("{}", table(&summaries));
        }
        if !qualities.is_empty() {
            print!("{}", Quality::table(&qualities));
            for (context_bytes, q) in &qualities {
                if let Some(error) = &q.first_error {
                    println!("context_bytes = {context_bytes}: first error: {error}");
                }
            }
        }
    }
    Ok(())
}

impl Quality {
    fn latency(&self, q: f64) -> u64 {
        let mut sorted = self.latency_ms.clone();
        sorted.sort_unstable();
        sorted
            .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    }

    fn json(&self, context_bytes: u32) -> String {
        serde_json::json!({
            "quality_context_bytes": context_bytes,
            "points": self.points,
            "answered": self.answered,
            "failed": self.failed,
            "first_error": self.first_error,
            "exact_lines": self.exact_lines,
            "accepted_chars": self.accepted_chars,
            "latency_p50_ms": self.latency(0.5),
            "latency_p95_ms": self.latency(0.95),
        })
        .to_string()
    }

    fn table(rows: &[(u32, Quality)]) -> String {
        let mut out = String::from(
            "\n| the model alone, same points | answered (empty, failed) | exact line | accepted chars | latency p50 / p95 |\n|---|---:|---:|---:|---:|\n",
        );
        for (context_bytes, q) in rows {
            out.push_str(&format!(
                "| context_bytes = {context_bytes} ({} points) | {} ({}, {}) | {} ({:.1}%) | {} | {} / {} ms |\n",
                q.points,
                q.answered,
                q.points - q.answered - q.failed,
                q.failed,
                q.exact_lines,
                100.0 * q.exact_lines as f64 / q.points.max(1) as f64,
                q.accepted_chars,
                q.latency(0.5),
                q.latency(0.95),
            ));
        }
        out
    }
}

/// Points the test kit at the test peers' venv beside this binary's target directory, unless
/// `REAPER_TEST_PYTHON` already names one.
fn use_peers_python() -> anyhow::Result<()> {
    if std::env::var_os(PYTHON_ENV).is_some_and(|v| !v.is_empty()) {
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let candidates = exe
        .ancestors()
        .skip(1)
        .take(3)
        .map(|dir| dir.join("peers/venv/bin/python"));
    for python in candidates {
        if python.exists() {
            // Set before any thread of this program is started.
            std::env::set_var(PYTHON_ENV, &python);
            return Ok(());
        }
    }
    bail!(
        "no Python with llama.cpp (xllamacpp) and SmolLM2: run `cargo xtask peers`, or set {PYTHON_ENV}"
    )
}

/// llama.cpp serving SmolLM2 with its `/metrics` on, one slot (as the test kit starts it).
fn start_llama() -> anyhow::Result<LlamaServer> {
    std::panic::catch_unwind(|| {
        LlamaServer::start_with_metrics(LlamaOptions {
            api_key: None,
            parallel: 1,
        })
    })
    .map_err(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        anyhow::anyhow!("llama.cpp did not start: {message}")
    })
}

/// What one editor's replay left behind.
struct Measured {
    keys: Vec<KeyResult>,
    exchanges: Vec<Exchange>,
    /// llama.cpp's counters' deltas over the run.
    tokens_predicted: f64,
    prompt_tokens: f64,
    /// reaperd's `Health` typed-through counter's delta (zero for the direct client).
    typed_through: u64,
}

/// What every run uses: the settings, the runtime, the proxy in front of llama.cpp, the
/// keys and the workspace.
struct Rig<'a> {
    args: &'a KeystrokesArgs,
    runtime: &'a tokio::runtime::Runtime,
    proxy: &'a Proxy,
    llama: &'a LlamaServer,
    script: &'a Script,
    workspace: &'a Workspace,
}

fn reaper_run(rig: &Rig<'_>, context_bytes: u32) -> anyhow::Result<Measured> {
    let config = reaperd_config(rig, context_bytes, rig.args.timeout_ms, true);
    with_reaperd(rig, &config, async |client| {
        replay_through_reaper(client, rig.proxy, rig.llama, rig.script).await
    })
}

/// reaperd's configuration for a run: llama.cpp behind the proxy as `kind = "openai"`.
fn reaperd_config(rig: &Rig<'_>, context_bytes: u32, timeout_ms: u64, offline: bool) -> String {
    format!(
        "[rpc]\ncompletion_timeout = {}\n\n[completion]\ncontext_bytes = {context_bytes}\n\n\
         [providers.{PROVIDER}]\nkind = \"openai\"\nbase_url = \"http://{}/v1\"\n\
         model = \"{}\"\ntimeout_ms = {timeout_ms}\n\n\
         [providers.offline]\nenabled = {offline}\n",
        // A call's deadline is capped by completion_timeout (5 s by default).
        timeout_ms.max(5000),
        rig.proxy.addr(),
        rig.llama.model(),
    )
}

/// Starts a reaperd with `config`, connects, warms it up, runs `run`, and stops it.
fn with_reaperd<T>(
    rig: &Rig<'_>,
    config: &str,
    run: impl AsyncFnOnce(&Arc<Client>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let progress = Progress::new(0, false);
    let (child, dir) = start_reaperd(rig.args.reaperd.clone(), config, &progress)?;
    let result = rig.runtime.block_on(async {
        let options = ClientOptions::from_state_dir(&dir.path().join("state"), None)?;
        let client = Arc::new(Client::connect(options).await?);
        warm_up(&client, rig.workspace).await?;
        let result = run(&client).await;
        client.close().await;
        result
    });
    stop_reaperd(child);
    drop(dir);
    result
}

/// What the model answered at the same points with and without context.
#[derive(Debug, Default)]
struct Quality {
    points: usize,
    /// Calls that ended in an error, and the first error.
    failed: usize,
    first_error: Option<String>,
    answered: usize,
    exact_lines: usize,
    accepted_chars: usize,
    latency_ms: Vec<u64>,
}

/// Asks the model at `points` keys spread over the script, one at a time, waiting for each
/// answer (60 s at most), the offline model off so every answer is the model's.
fn quality_run(rig: &Rig<'_>, context_bytes: u32) -> anyhow::Result<Quality> {
    let (llama, script) = (rig.llama, rig.script);
    let config = reaperd_config(rig, context_bytes, 60_000, false);
    let points = rig.args.quality_points.min(script.keys.len());
    with_reaperd(rig, &config, async |client| {
        wait_idle(llama).await?;
        let mut quality = Quality {
            points,
            ..Quality::default()
        };
        for p in 0..points {
            let i = p * script.keys.len() / points;
            let options = CallOptions {
                deadline: Some(Duration::from_secs(60)),
            };
            let started = Instant::now();
            let answer = match client.complete(&script.request(i), options).await {
                Ok(answer) => answer,
                Err(error) => {
                    quality.failed += 1;
                    quality.first_error.get_or_insert_with(|| error.to_string());
                    continue;
                }
            };
            quality
                .latency_ms
                .push(started.elapsed().as_millis() as u64);
            if answer.completion.is_empty() {
                continue;
            }
            quality.answered += 1;
            let score = script::score(&answer.completion, script.truth(i));
            quality.exact_lines += usize::from(score.exact_line);
            quality.accepted_chars += score.accepted_chars;
        }
        Ok(quality)
    })
}

/// One completion in another file of the workspace before the replay: the provider learns
/// that `/infill` is unavailable, its connection is open, and the offline index is built.
async fn warm_up(client: &Client, workspace: &Workspace) -> anyhow::Result<()> {
    let request = CompletionRequest {
        prefix: "fn main() {\n    let".to_owned(),
        suffix: "\n}\n".to_owned(),
        language: "rust".to_owned(),
        file_path: Some(workspace.root().join("warm_up.rs").display().to_string()),
        context: None,
    };
    client.complete(&request, CallOptions::default()).await?;
    // The index builds in the background; give it time (a few hundred ms for this repo).
    tokio::time::sleep(Duration::from_secs(2)).await;
    client.complete(&request, CallOptions::default()).await?;
    Ok(())
}

async fn replay_through_reaper(
    client: &Arc<Client>,
    proxy: &Proxy,
    llama: &LlamaServer,
    script: &Script,
) -> anyhow::Result<Measured> {
    let before = client.health().await?.cache;
    let keys = counted(llama, proxy, typist::through_reaper(client.clone(), script)).await?;
    let after = client.health().await?.cache;
    Ok(Measured {
        typed_through: after.typed_through - before.typed_through,
        ..keys
    })
}

/// Runs `replay` with llama.cpp idle before and after, and counts what reached it: the
/// exchanges through the proxy and llama.cpp's token counters.
async fn counted(
    llama: &LlamaServer,
    proxy: &Proxy,
    replay: impl std::future::Future<Output = Vec<KeyResult>>,
) -> anyhow::Result<Measured> {
    wait_idle(llama).await?;
    let (predicted, prompt) = counters(llama);
    proxy.take();
    let keys = replay.await;
    wait_idle(llama).await?;
    let (predicted_after, prompt_after) = counters(llama);
    Ok(Measured {
        keys,
        exchanges: proxy.take(),
        tokens_predicted: predicted_after - predicted,
        prompt_tokens: prompt_after - prompt,
        typed_through: 0,
    })
}

fn direct_run(rig: &Rig<'_>) -> anyhow::Result<Measured> {
    let (proxy, llama, script) = (rig.proxy, rig.llama, rig.script);
    let debounce = Duration::from_millis(rig.args.debounce_ms);
    rig.runtime.block_on(counted(
        llama,
        proxy,
        typist::direct(proxy.addr(), llama.model(), script, debounce),
    ))
}

/// Waits until llama.cpp generates nothing (what one run left must not slow the next).
async fn wait_idle(llama: &LlamaServer) -> anyhow::Result<()> {
    let start = Instant::now();
    // Two idle looks in a row: a request may be between its connection and its slot.
    let mut idle_looks = 0;
    while idle_looks < 2 {
        if start.elapsed() > IDLE_WAIT {
            bail!("llama.cpp was still generating {IDLE_WAIT:?} after the run");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let generating = tokio::task::block_in_place(|| llama.generating());
        idle_looks = if generating { 0 } else { idle_looks + 1 };
    }
    Ok(())
}

/// Appends one editor's exchanges to `path` as JSON lines.
fn log_exchanges(
    path: &std::path::Path,
    editor: Editor,
    script: &Script,
    m: &Measured,
) -> anyhow::Result<()> {
    use std::io::Write;
    let Some(first) = m.keys.first().map(|k| k.pressed) else {
        return Ok(());
    };
    let tails = key_tails(script);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let since = |t: Instant| t.saturating_duration_since(first).as_secs_f64() * 1e3;
    for e in &m.exchanges {
        let line = serde_json::json!({
            "editor": editor.name(),
            "path": e.path,
            "status": e.status,
            "start_ms": since(e.started),
            "ms": (e.ended - e.started).as_secs_f64() * 1e3,
            "finished": e.finished,
            "tokens": e.stream.tokens,
            "text": e.stream.text,
            "key": key_of(e, &m.keys, &tails),
            "prompt_bytes": e.prompt.len(),
            "prompt_head": reaper_core::text::head(&e.prompt, 200),
        });
        writeln!(file, "{line}")?;
    }
    Ok(())
}

/// Each key's last [`KEY_TAIL`] bytes before the cursor.
fn key_tails(script: &Script) -> Vec<&str> {
    script
        .keys
        .iter()
        .map(|k| reaper_core::text::tail(&script.text[..k.cursor], KEY_TAIL))
        .collect()
}

/// llama.cpp's `tokens_predicted_total` and `prompt_tokens_total`.
fn counters(llama: &LlamaServer) -> (f64, f64) {
    let (_, text) = tokio::task::block_in_place(|| llama.get("/metrics"));
    let value = |name: &str| {
        text.lines()
            .find_map(|line| {
                line.strip_prefix(name)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(f64::NAN)
    };
    (
        value("llamacpp:tokens_predicted_total"),
        value("llamacpp:prompt_tokens_total"),
    )
}

/// One editor's figures.
#[derive(Debug)]
struct Summary {
    editor: Editor,
    keys: usize,
    shown: usize,
    ghost_ms: Histogram<u64>,
    overtaken: usize,
    requests_sent: usize,
    failures: usize,
    first_failure: Option<String>,
    model_requests: usize,
    model_cancelled: usize,
    tokens_predicted: f64,
    tokens_streamed: u64,
    tokens_unseen: u64,
    prompt_tokens: f64,
    cache_hits: usize,
    typed_through: u64,
    offline_answers: usize,
    exact_lines: usize,
    accepted_chars: usize,
    overhead_us: Histogram<u64>,
}

impl Summary {
    fn of(editor: Editor, args: &KeystrokesArgs, script: &Script, m: &Measured) -> Summary {
        let keys = &m.keys;
        let mut s = Summary {
            editor,
            keys: keys.len(),
            shown: 0,
            ghost_ms: histogram(),
            overtaken: 0,
            requests_sent: keys.iter().filter(|k| k.sent.is_some()).count(),
            failures: 0,
            first_failure: None,
            model_requests: 0,
            model_cancelled: 0,
            tokens_predicted: m.tokens_predicted,
            tokens_streamed: 0,
            tokens_unseen: 0,
            prompt_tokens: m.prompt_tokens,
            cache_hits: keys
                .iter()
                .filter(|k| k.answer.as_ref().is_some_and(|a| a.cached))
                .count(),
            typed_through: m.typed_through,
            offline_answers: 0,
            exact_lines: 0,
            accepted_chars: 0,
            overhead_us: histogram(),
        };
        // Which keys showed their answer.
        let mut shown = vec![false; keys.len()];
        for (i, key) in keys.iter().enumerate() {
            let next = keys
                .get(i + 1)
                .map_or(key.pressed + LAST_KEY_WAIT, |k| k.pressed);
            let in_time = key.answered.is_some_and(|t| t <= next);
            if !in_time {
                s.overtaken += 1;
            }
            if let Some(failure) = &key.failure {
                if failure != "superseded" && failure != "cancelled" {
                    s.failures += 1;
                    s.first_failure.get_or_insert_with(|| failure.clone());
                }
            }
            let Some(answer) = &key.answer else { continue };
            if answer.provider == "offline" {
                s.offline_answers += 1;
            }
            if in_time && !answer.text.is_empty() && answer.confidence >= args.min_confidence {
                shown[i] = true;
                s.shown += 1;
                let waited = key.answered.unwrap_or(key.pressed) - key.pressed;
                s.ghost_ms.saturating_record(waited.as_millis() as u64);
                let score = script::score(&answer.text, script.truth(i));
                s.exact_lines += usize::from(score.exact_line);
                s.accepted_chars += score.accepted_chars;
            }
        }
        // The model's side, exchange by exchange.
        let tails = key_tails(script);
        let mut exchanges_of_key = vec![Vec::new(); keys.len()];
        for (e, exchange) in m.exchanges.iter().enumerate() {
            if !exchange.reached_model() {
                continue;
            }
            s.model_requests += 1;
            s.model_cancelled += usize::from(!exchange.finished);
            let tokens = u64::from(exchange.stream.tokens);
            s.tokens_streamed += tokens;
            let key = key_of(exchange, keys, &tails);
            if let Some(k) = key {
                exchanges_of_key[k].push(e);
            }
            let seen = key.is_some_and(|k| {
                shown[k]
                    && keys[k]
                        .answer
                        .as_ref()
                        .is_some_and(|a| !a.cached && a.provider != "offline")
            });
            if !seen {
                s.tokens_unseen += tokens;
            }
        }
        // The daemon's own time around the provider's.
        if editor != Editor::Direct {
            for (k, key) in keys.iter().enumerate() {
                let from_model = key
                    .answer
                    .as_ref()
                    .is_some_and(|a| !a.cached && a.provider == PROVIDER);
                let (Some(sent), Some(answered), [e]) =
                    (key.sent, key.answered, exchanges_of_key[k].as_slice())
                else {
                    continue;
                };
                let exchange = &m.exchanges[*e];
                if from_model && exchange.finished {
                    let client = answered - sent;
                    let provider = exchange.ended - exchange.started;
                    let own = client.saturating_sub(provider);
                    s.overhead_us.saturating_record(own.as_micros() as u64);
                }
            }
        }
        s
    }

    fn quantile_ms(&self, q: f64) -> Option<u64> {
        (!self.ghost_ms.is_empty()).then(|| self.ghost_ms.value_at_quantile(q))
    }

    fn overhead(&self, q: f64) -> Option<u64> {
        (!self.overhead_us.is_empty()).then(|| self.overhead_us.value_at_quantile(q))
    }

    /// One line for the log as each editor finishes.
    fn brief(&self) -> String {
        format!(
            "{}: ghost text at {}/{} keys, {} requests reached the model, {} failures{}",
            self.editor,
            self.shown,
            self.keys,
            self.model_requests,
            self.failures,
            self.first_failure
                .as_deref()
                .map(|f| format!(" (first: {f})"))
                .unwrap_or_default()
        )
    }

    fn json(&self) -> String {
        serde_json::json!({
            "editor": self.editor.name(),
            "keys": self.keys,
            "ghost_text_keys": self.shown,
            "ghost_p50_ms": self.quantile_ms(0.5),
            "ghost_p95_ms": self.quantile_ms(0.95),
            "overtaken": self.overtaken,
            "requests_sent": self.requests_sent,
            "failures": self.failures,
            "model_requests": self.model_requests,
            "model_requests_cancelled": self.model_cancelled,
            "tokens_generated": finite(self.tokens_predicted),
            "tokens_streamed": self.tokens_streamed,
            "tokens_streamed_unseen": self.tokens_unseen,
            "prompt_tokens_evaluated": finite(self.prompt_tokens),
            "cache_hits": self.cache_hits,
            "typed_through": self.typed_through,
            "offline_answers": self.offline_answers,
            "exact_lines": self.exact_lines,
            "accepted_chars": self.accepted_chars,
            "overhead_answers": self.overhead_us.len(),
            "overhead_p50_us": self.overhead(0.5),
            "overhead_p99_us": self.overhead(0.99),
            "overhead_max_us": self.overhead(1.0),
        })
        .to_string()
    }
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// The key an exchange answers: the latest key pressed before it started whose prefix tail
/// its prompt contains (a later key's tail holds characters typed after the prompt was made).
fn key_of(exchange: &Exchange, keys: &[KeyResult], tails: &[&str]) -> Option<usize> {
    if exchange.prompt.is_empty() {
        return None;
    }
    let before = keys.partition_point(|k| k.pressed <= exchange.started);
    (before.saturating_sub(MATCH_WINDOW)..before)
        .rev()
        .find(|&k| exchange.prompt.contains(tails[k]))
}

/// The figures as a markdown table, one column per editor.
fn table(summaries: &[Summary]) -> String {
    let mut out = String::new();
    let header: Vec<String> = summaries.iter().map(|s| s.editor.to_string()).collect();
    out.push_str(&format!("| | {} |\n", header.join(" | ")));
    out.push_str(&format!("|---|{}\n", "---:|".repeat(summaries.len())));
    type Cell = Box<dyn Fn(&Summary) -> String>;
    let rows: Vec<(&str, Cell)> = vec![
        ("keys typed", Box::new(|s| s.keys.to_string())),
        ("keys with ghost text", Box::new(|s| pct(s.shown, s.keys))),
        (
            "time to ghost text p50",
            Box::new(|s| ms(s.quantile_ms(0.5))),
        ),
        (
            "time to ghost text p95",
            Box::new(|s| ms(s.quantile_ms(0.95))),
        ),
        (
            "overtaken by the next key",
            Box::new(|s| pct(s.overtaken, s.keys)),
        ),
        (
            "requests sent by the editor",
            Box::new(|s| s.requests_sent.to_string()),
        ),
        (
            "requests to llama.cpp (closed before the end)",
            Box::new(|s| format!("{} ({})", s.model_requests, s.model_cancelled)),
        ),
        (
            "prompt tokens evaluated",
            Box::new(|s| count(s.prompt_tokens)),
        ),
        ("tokens generated", Box::new(|s| count(s.tokens_predicted))),
        (
            "tokens streamed (for answers nobody saw)",
            Box::new(|s| format!("{} ({})", s.tokens_streamed, s.tokens_unseen)),
        ),
        (
            "cache hits (typed-through)",
            Box::new(|s| format!("{} ({})", s.cache_hits, s.typed_through)),
        ),
        (
            "answers from the offline model",
            Box::new(|s| s.offline_answers.to_string()),
        ),
        ("other failures", Box::new(|s| s.failures.to_string())),
        ("exact line", Box::new(|s| pct(s.exact_lines, s.keys))),
        (
            "accepted chars (per key)",
            Box::new(|s| {
                format!(
                    "{} ({:.2})",
                    s.accepted_chars,
                    s.accepted_chars as f64 / s.keys.max(1) as f64
                )
            }),
        ),
        (
            "daemon overhead p50 / p99 (answers)",
            Box::new(|s| {
                if s.editor == Editor::Direct {
                    dash()
                } else {
                    format!(
                        "{} / {} ({})",
                        us(s.overhead(0.5)),
                        us(s.overhead(0.99)),
                        s.overhead_us.len()
                    )
                }
            }),
        ),
    ];
    for (name, cell) in rows {
        let cells: Vec<String> = summaries.iter().map(&cell).collect();
        out.push_str(&format!("| {name} | {} |\n", cells.join(" | ")));
    }
    out
}

fn dash() -> String {
    "–".to_owned()
}

fn ms(v: Option<u64>) -> String {
    v.map_or_else(dash, |v| format!("{v} ms"))
}

fn us(v: Option<u64>) -> String {
    v.map_or_else(dash, |v| format!("{v} µs"))
}

fn count(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.0}")
    } else {
        dash()
    }
}

fn pct(n: usize, of: usize) -> String {
    if of == 0 {
        dash()
    } else {
        format!("{n} ({:.1}%)", 100.0 * n as f64 / of as f64)
    }
}
