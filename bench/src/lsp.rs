//! `reaper-bench lsp`: what the editor bridge adds to a keystroke. One reaperd, one
//! `reaper lsp` in front of it, and a `reaper-client` connection of the bench's own; each
//! scenario asks through the bridge (LSP JSON-RPC over its stdin/stdout, as an editor does)
//! and directly (the same Completion request), alternately call for call, so both sides see
//! the same moments of a noisy machine. Every answer is a cache hit, so what is measured is
//! transport and bridge, not a model:
//!
//! - `repeat`: `textDocument/inlineCompletion` at one cursor, again and again (an exact hit).
//! - `typing`: a `didChange` typing the suggestion's next character, then the request at the
//!   new cursor (a typed-through hit), against the direct call with the longer prefix.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use reaper_client::schema::CompletionRequest;
use reaper_client::{Client, ClientOptions};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::progress::Progress;
use crate::reaper::{start_reaperd, stop_reaperd};
use crate::report::time_alternating_async;

/// `reaper-bench lsp` settings.
#[derive(Debug, clap::Args)]
pub struct LspArgs {
    /// Measured calls per scenario and path (after unmeasured ones: a tenth as many, at least
    /// 200).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub calls: u64,
    /// The reaperd binary (default: the one beside this binary); `reaper` is taken from the
    /// same directory.
    #[arg(long, value_name = "PATH")]
    pub reaperd: Option<PathBuf>,
    /// One JSON object per scenario instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// The line being typed, and what the workspace says follows it.
const LINE: &str = "    let retry = RetryPolicy::new(";
const SUGGESTION: &str = "3, Duration::from_millis(100));";

/// One scenario's figures, both paths.
pub struct Measured {
    pub scenario: &'static str,
    pub bridge: Histogram<u64>,
    pub direct: Histogram<u64>,
}

impl Measured {
    /// The bridge's share at a quantile: its latency less the direct call's.
    pub fn share_us(&self, quantile: f64) -> i64 {
        self.bridge.value_at_quantile(quantile) as i64
            - self.direct.value_at_quantile(quantile) as i64
    }

    fn json(&self) -> Value {
        let path = |h: &Histogram<u64>| {
            json!({"p50_us": h.value_at_quantile(0.5), "p95_us": h.value_at_quantile(0.95),
                   "p99_us": h.value_at_quantile(0.99), "max_us": h.max(), "calls": h.len()})
        };
        json!({"scenario": self.scenario, "bridge": path(&self.bridge), "direct": path(&self.direct),
               "bridge_share_p50_us": self.share_us(0.5), "bridge_share_p99_us": self.share_us(0.99)})
    }
}

pub fn run(args: &LspArgs) -> anyhow::Result<()> {
    let measured = measure(args)?;
    if args.json {
        for m in &measured {
            println!("{}", m.json());
        }
    } else {
        println!("{}", table(&measured));
    }
    Ok(())
}

/// Starts a daemon and a bridge, measures both scenarios, stops them.
pub fn measure(args: &LspArgs) -> anyhow::Result<Vec<Measured>> {
    let workspace = workspace()?;
    let (daemon, dir) = start_reaperd(args.reaperd.clone(), "", &Progress::new(0, false))?;
    let state = dir.path().join("state");
    let reaper = args
        .reaperd
        .clone()
        .map_or_else(std::env::current_exe, Ok)?
        .with_file_name("reaper");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let client = Client::connect(ClientOptions::from_state_dir(&state, None)?).await?;
        let mut bridge = Bridge::start(&reaper, &state, dir.path()).await?;
        let result = scenarios(args, &client, &mut bridge, workspace.path()).await;
        bridge.stop().await;
        client.close().await;
        result
    });
    stop_reaperd(daemon);
    result
}

async fn scenarios(
    args: &LspArgs,
    client: &Client,
    bridge: &mut Bridge,
    workspace: &Path,
) -> anyhow::Result<Vec<Measured>> {
    let file = workspace.join("src").join("next.rs");
    let uri = format!("file://{}", file.display());
    let head = "use std::time::Duration;\n\nfn next() {\n";
    let tail = "\n}\n";
    bridge.initialize(workspace).await?;
    bridge
        .notify(
            "textDocument/didOpen",
            json!({"textDocument": {"uri": uri, "languageId": "rust", "version": 1,
                   "text": format!("{head}{LINE}{tail}")}}),
        )
        .await?;
    let (line, column) = (3, LINE.len());
    // The first completion in a workspace starts indexing it: ask until it answers.
    let started = Instant::now();
    loop {
        if bridge.complete(&uri, line, column).await? == SUGGESTION {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the bridge gave no completion in 30 s (is the offline provider on?)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The request the bridge sends, made directly: the whole buffer fits its byte limits.
    let direct = |typed: &str| CompletionRequest {
        prefix: format!("{head}{LINE}{typed}"),
        suffix: tail.to_owned(),
        language: "rust".to_owned(),
        file_path: Some(file.display().to_string()),
        context: None,
    };
    let exact = direct("");
    let mut hits = 0;
    let mut misses = 0;
    let mut count = async |before: reaper_client::schema::CacheStats| -> anyhow::Result<()> {
        let after = client.health().await?.cache;
        hits += after.hits - before.hits;
        misses += after.misses - before.misses;
        Ok(())
    };
    let before = client.health().await?.cache;
    let [(repeat_bridge, _), (repeat_direct, _)] = time_alternating_async(
        args.calls,
        async || {
            let text = bridge.complete(&uri, line, column).await?;
            expect(&text, SUGGESTION)
        },
        async || {
            let answer = client.complete(&exact, Default::default()).await?;
            expect(&answer.completion, SUGGESTION)
        },
    )
    .await?;
    count(before).await?;

    // Typing through the suggestion one character at a time, back to its start once all but
    // its last character are typed (that reset is part of the bridge's timed keystroke: one
    // more notification written, no answer awaited). One cycle first, unmeasured: the first
    // keystroke after a reset is a miss once (the cache's typed-through entry is the latest
    // suggestion, by then its last character), then an exact hit.
    let mut typist = Typist {
        typed: 0,
        version: 1,
        line,
        column,
    };
    for _ in 0..SUGGESTION.len() + 1 {
        typist.keystroke(bridge, &uri).await?;
    }
    let before = client.health().await?.cache;
    let mut direct_typed = 0;
    let [(typing_bridge, _), (typing_direct, _)] = time_alternating_async(
        args.calls,
        async || typist.keystroke(bridge, &uri).await,
        async || {
            let n = direct_typed % (SUGGESTION.len() - 1) + 1;
            direct_typed += 1;
            let answer = client
                .complete(&direct(&SUGGESTION[..n]), Default::default())
                .await?;
            expect(&answer.completion, &SUGGESTION[n..])
        },
    )
    .await?;
    count(before).await?;
    let asked = 4 * (args.calls + crate::report::warm_up(args.calls));
    if hits < asked {
        bail!("{hits} cache hits and {misses} misses for {asked} calls: the scenarios measured more than transport");
    }
    Ok(vec![
        Measured {
            scenario: "repeat",
            bridge: repeat_bridge,
            direct: repeat_direct,
        },
        Measured {
            scenario: "typing",
            bridge: typing_bridge,
            direct: typing_direct,
        },
    ])
}

fn expect(got: &str, wanted: &str) -> anyhow::Result<()> {
    if got == wanted {
        Ok(())
    } else {
        bail!("expected the completion {wanted:?}, got {got:?}")
    }
}

/// A git repository whose files repeat `LINE` followed by `SUGGESTION`.
fn workspace() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join(".git"))?;
    std::fs::write(dir.path().join(".git/HEAD"), "ref: refs/heads/main\n")?;
    std::fs::create_dir_all(dir.path().join("src"))?;
    let mut text = String::from("use std::time::Duration;\n\n");
    for i in 0..8 {
        text.push_str(&format!(
            "fn attempt_{i}() {{\n{LINE}{SUGGESTION}\n    retry.run_{i}();\n}}\n\n"
        ));
    }
    std::fs::write(dir.path().join("src").join("lib.rs"), text)?;
    Ok(dir)
}

/// Where the `typing` scenario is in the suggestion.
struct Typist {
    /// Characters of the suggestion typed so far.
    typed: usize,
    version: i64,
    line: usize,
    column: usize,
}

impl Typist {
    /// Types the suggestion's next character (back to its start after all but its last),
    /// asks at the new cursor and checks the answer is the rest.
    async fn keystroke(&mut self, bridge: &mut Bridge, uri: &str) -> anyhow::Result<()> {
        let (line, column) = (self.line, self.column);
        if self.typed + 1 >= SUGGESTION.len() {
            self.version += 1;
            let typed_end = (line, column + self.typed);
            bridge
                .change(uri, self.version, (line, column), typed_end, "")
                .await?;
            self.typed = 0;
        }
        let n = self.typed;
        self.version += 1;
        let at = (line, column + n);
        bridge
            .change(uri, self.version, at, at, &SUGGESTION[n..n + 1])
            .await?;
        self.typed = n + 1;
        let text = bridge.complete(uri, line, column + n + 1).await?;
        expect(&text, &SUGGESTION[n + 1..])
    }
}

/// `reaper lsp`, spoken to as an editor does.
struct Bridge {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    next_id: i64,
}

impl Bridge {
    async fn start(reaper: &Path, state: &Path, logs: &Path) -> anyhow::Result<Bridge> {
        let mut child = Command::new(reaper)
            .args(["lsp", "--no-start", "--log-file"])
            .arg(logs.join("lsp.log"))
            .env("REAPER_STATE_DIR", state)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {} lsp", reaper.display()))?;
        let stdin = child.stdin.take().context("the bridge's stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("the bridge's stdout")?);
        Ok(Bridge {
            child,
            stdin,
            stdout,
            next_id: 1,
        })
    }

    async fn send(&mut self, message: Value) -> anyhow::Result<()> {
        let body = message.to_string();
        let framed = format!("Content-Length: {}\r\n\r\n{body}", body.len());
        self.stdin.write_all(framed.as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    async fn notify(&mut self, method: &str, params: Value) -> anyhow::Result<()> {
        self.send(json!({"jsonrpc": "2.0", "method": method, "params": params}))
            .await
    }

    /// Sends a request and returns its result, skipping the notifications before it.
    async fn request(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await?;
        for _ in 0..1000 {
            let message = self.read().await?;
            if message.get("id") == Some(&json!(id)) {
                if let Some(error) = message.get("error") {
                    bail!("{method} failed: {error}");
                }
                return Ok(message.get("result").cloned().unwrap_or(Value::Null));
            }
        }
        bail!("no answer to {method} among 1000 messages")
    }

    async fn read(&mut self) -> anyhow::Result<Value> {
        let mut length = None;
        let mut line = String::new();
        loop {
            line.clear();
            if self.stdout.read_line(&mut line).await? == 0 {
                bail!("the bridge closed its output");
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some(n) = header.strip_prefix("Content-Length: ") {
                length = Some(n.parse::<usize>()?);
            }
        }
        let mut body = vec![0; length.context("a message without Content-Length")?];
        self.stdout.read_exact(&mut body).await?;
        Ok(serde_json::from_slice(&body)?)
    }

    async fn initialize(&mut self, root: &Path) -> anyhow::Result<()> {
        self.request(
            "initialize",
            json!({"capabilities": {"general": {"positionEncodings": ["utf-8"]}},
                   "rootUri": format!("file://{}", root.display())}),
        )
        .await?;
        self.notify("initialized", json!({})).await
    }

    async fn change(
        &mut self,
        uri: &str,
        version: i64,
        start: (usize, usize),
        end: (usize, usize),
        text: &str,
    ) -> anyhow::Result<()> {
        let position =
            |(line, character): (usize, usize)| json!({"line": line, "character": character});
        self.notify(
            "textDocument/didChange",
            json!({"textDocument": {"uri": uri, "version": version},
                   "contentChanges": [{"range": {"start": position(start), "end": position(end)}, "text": text}]}),
        )
        .await
    }

    /// The first item's text at the cursor, or "" for an empty list.
    async fn complete(
        &mut self,
        uri: &str,
        line: usize,
        character: usize,
    ) -> anyhow::Result<String> {
        let result = self
            .request(
                "textDocument/inlineCompletion",
                json!({"textDocument": {"uri": uri}, "position": {"line": line, "character": character},
                       "context": {"triggerKind": 2}}),
            )
            .await?;
        Ok(result
            .pointer("/items/0/insertText")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned())
    }

    async fn stop(mut self) {
        let _ = self.request("shutdown", Value::Null).await;
        let _ = self.notify("exit", Value::Null).await;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

fn table(measured: &[Measured]) -> String {
    let mut out = String::from("scenario  path      p50 µs   p95 µs   p99 µs   max µs\n");
    for m in measured {
        for (path, h) in [("bridge", &m.bridge), ("direct", &m.direct)] {
            out.push_str(&format!(
                "{:<9} {:<8} {:>7} {:>8} {:>8} {:>8}\n",
                m.scenario,
                path,
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.95),
                h.value_at_quantile(0.99),
                h.max()
            ));
        }
        out.push_str(&format!(
            "{:<9} bridge's share: p50 {} µs, p99 {} µs\n",
            m.scenario,
            m.share_us(0.5),
            m.share_us(0.99)
        ));
    }
    out
}
