//! `reaper-perf`: the performance gates CI runs.
//!
//! Runs `reaper-bench --quick --json` (from beside this binary: build both with
//! `cargo build --release`), then fails the build, saying why with the figures, when:
//! - a unary call's p99 is 10 ms or more, or a completion's p99 100 ms or more (the product's
//!   promise), for any reaper scenario, under any placement;
//! - the completion cache hit's p99 is more than 1.5x the p99 of `Health.check` measured in the
//!   same run under the same placement (a hit must cost what a plain call costs);
//! - reaper's unary p50 (`unary_2k`, one call at a time) is not lower than tonic's measured in
//!   the same run under the same placement;
//! - `reaper health` as a whole process (`cli_health`) takes 50 ms or more at p50;
//! - chat (`reaper-bench chat`, against llama.cpp, whose Python the test peers' venv provides:
//!   `REAPER_TEST_PYTHON`): the daemon's share of a chat's first token or of a later token is
//!   1 ms or more at p50; a stream of 1,000 pieces through reaperd takes more than 1.5x as long
//!   at p50 as through a tonic chat proxy doing the same work, same run, same placement; a
//!   completion on a one-slot llama.cpp while a chat streams is not at least twice as fast at
//!   p50 with the completion's priority as without.
//!
//! These machines are shared and noisy. `--quick` measures each placement in 4 rounds of every
//! stack in turn, and the cache hit alternately with Health, call for call, so a slow stretch
//! falls on both sides of a comparison; a failing run is measured once more and the build
//! fails only if the second run fails too; both are printed. Then it reports, without gating,
//! how the run compares with the goals in `docs/perf.md`.

use std::process::Command;

use anyhow::{bail, Context};
use serde_json::Value;

/// The promise for any unary call.
const UNARY_P99_US: u64 = 10_000;
/// The promise for a completion.
const COMPLETION_P99_US: u64 = 100_000;
/// `reaper health` as a whole process, at p50: a generous ceiling (measured 4.4 ms; before the
/// CLI stopped waiting out QUIC's drain, ~80 ms).
const CLI_P50_US: u64 = 50_000;
/// The goal for `reaper health` as a whole process (docs/perf.md), reported.
const CLI_GOAL_US: u64 = 10_000;
/// Issue 14's goal for a reconnect that resumes with 0-RTT data, first answer included.
const RECONNECT_GOAL_US: u64 = 500;
/// A cache hit may cost at most this multiple of a plain call, at p99.
const HIT_OVER_HEALTH_P99: f64 = 1.5;
/// The most the editor bridge may add to an inline completion, at p50 (a generous ceiling:
/// measured at 110–170 µs).
const BRIDGE_SHARE_P50_US: i64 = 1_000;
/// The bridge's goal at p99 (docs/perf.md), reported.
const BRIDGE_SHARE_P99_GOAL_US: i64 = 500;
/// Calls per scenario of the bridge measurement.
const BRIDGE_CALLS: &str = "1000";
/// The most the daemon may add to a chat's first token, or to a later one, at p50 (measured:
/// 215 and 91 µs).
const CHAT_SHARE_P50_US: i64 = 1_000;
/// The daemon's share of a token's latency the design aims for, at p99 (reported).
const CHAT_SHARE_P99_GOAL_US: i64 = 1_000;
/// A stream through reaperd may take at most this multiple of tonic's, at p50 (measured
/// 0.69–0.79x).
const CHAT_STREAM_OVER_TONIC_P50: f64 = 1.5;
/// With priority, a completion during a chat must be at least this many times faster at p50
/// than without (measured ~20x on a one-slot llama.cpp).
const CHAT_PRIORITY_SPEEDUP: f64 = 2.0;
/// The chat measurement, sized for CI: 20 answers per path, 30 streams, 5 completions per
/// priority scenario on a one-slot llama.cpp with 150-token chats.
const CHAT_ARGS: &[&str] = &[
    "chat",
    "--json",
    "--answers",
    "20",
    "--streams",
    "30",
    "--completions",
    "5",
    "--parallel",
    "1",
    "--chat-tokens",
    "150",
];

const HELP: &str = "\
reaper-perf: the performance gates CI runs.

Usage: reaper-perf [REAPER-BENCH OPTIONS]

Runs `reaper-bench --quick --json` (from beside this binary; build both with
`cargo build --release`), passing any options on to it, and fails (exit 1), with the
figures, when under any placement:
  - a unary call's p99 is 10 ms or more, or a completion's 100 ms or more;
  - the completion cache hit's p99 is more than 1.5x Health's p99 of the same run;
  - reaper's unary_2k p50 is not lower than tonic's of the same run;
  - `reaper health` as a whole process takes 50 ms or more at p50;
  - the editor bridge (`reaper-bench lsp`, which needs `reaper` built beside it) adds
    1 ms or more to an inline completion at p50;
  - chat (`reaper-bench chat`, against llama.cpp: set REAPER_TEST_PYTHON to the test peers'
    venv, target/peers/venv/bin/python after `cargo test-all`): the daemon adds 1 ms or
    more to a chat's first token or a later one at p50; a 1,000-piece stream through reaperd
    takes over 1.5x as long at p50 as through a tonic chat proxy; a completion while a chat
    streams on a one-slot llama.cpp is not at least 2x as fast with priority as without;
  - a measurement a gate needs is missing.
--quick measures every stack in 4 rounds in turn, and the cache hit alternately
with Health, so a slow stretch of a shared machine falls on both sides of a
comparison. A failing run is measured once more; the build fails only if both
runs fail. Then it reports,
without gating, how the run compares with the goals in docs/perf.md.";

fn main() {
    if std::env::args().skip(1).any(|a| a == "-h" || a == "--help") {
        println!("{HELP}");
        return;
    }
    match run() {
        Ok(()) => {}
        Err(error) => {
            eprintln!("reaper-perf: {error:#}");
            std::process::exit(1);
        }
    }
}

fn run() -> anyhow::Result<()> {
    let mut rows = match measure() {
        Ok(rows) => rows,
        Err(error) => {
            println!("run 1: {error:#}\nreaper-perf: measuring once more before failing the build");
            measure()?
        }
    };
    let mut failures = check(&rows);
    if !failures.is_empty() {
        for failure in &failures {
            println!("run 1: gate failed: {failure}");
        }
        println!("reaper-perf: measuring once more before failing the build");
        rows = measure()?;
        failures = check(&rows);
    }
    for line in goals(&rows) {
        println!("goal (not gated): {line}");
    }
    if failures.is_empty() {
        println!(
            "reaper-perf: all gates passed ({} measurements)",
            rows.len()
        );
        Ok(())
    } else {
        for failure in &failures {
            eprintln!("gate failed: {failure}");
        }
        bail!("{} gate(s) failed in two runs in a row", failures.len())
    }
}

/// One `reaper-bench --quick --json` run (plus any arguments given to this tool), then one
/// `reaper-bench lsp --json` run, whose rows are marked `"stack": "lsp"`, and one
/// `reaper-bench chat --json` run, whose rows are marked `"stack": "chat"`.
fn measure() -> anyhow::Result<Vec<Value>> {
    let mut rows = bench(&["--quick", "--json"], true)?;
    for (args, stack) in [
        (&["lsp", "--json", "--calls", BRIDGE_CALLS][..], "lsp"),
        (CHAT_ARGS, "chat"),
    ] {
        let mut more = bench(args, false)?;
        for row in &mut more {
            row["stack"] = Value::from(stack);
        }
        rows.extend(more);
    }
    Ok(rows)
}

/// `reaper-bench ARGS`'s JSON lines (printed as they are), with this tool's own arguments
/// passed on when `pass_on`.
fn bench(args: &[&str], pass_on: bool) -> anyhow::Result<Vec<Value>> {
    let bench = std::env::current_exe()?.with_file_name("reaper-bench");
    let passed: Vec<String> = if pass_on {
        std::env::args().skip(1).collect()
    } else {
        Vec::new()
    };
    let output = Command::new(&bench)
        .args(args)
        .args(passed)
        .output()
        .with_context(|| {
            format!(
                "cannot run {} (cargo build --release first)",
                bench.display()
            )
        })?;
    if !output.status.success() {
        bail!(
            "reaper-bench failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let rows: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("reaper-bench printed something that is not JSON")?;
    for row in &rows {
        println!("{row}");
    }
    Ok(rows)
}

fn field<'a>(row: &'a Value, name: &str) -> &'a str {
    row[name].as_str().unwrap_or("")
}

fn number(row: &Value, name: &str) -> u64 {
    row[name].as_u64().unwrap_or(0)
}

fn rate(row: &Value) -> f64 {
    row["calls_per_s"].as_f64().unwrap_or(0.0)
}

/// The row of `stack` for `scenario` at `concurrency` on one connection under `pin`.
fn find<'a>(
    rows: &'a [Value],
    stack: &str,
    scenario: &str,
    concurrency: u64,
    pin: &str,
) -> Option<&'a Value> {
    rows.iter().find(|r| {
        field(r, "stack") == stack
            && field(r, "scenario") == scenario
            && number(r, "concurrency") == concurrency
            && r["connections"].as_u64().unwrap_or(1) == 1
            && field(r, "pin") == pin
    })
}

/// Placements present in the rows, in order (the bridge's rows have none).
fn pins(rows: &[Value]) -> Vec<&str> {
    let mut pins: Vec<&str> = Vec::new();
    for row in rows
        .iter()
        .filter(|r| !["lsp", "chat"].contains(&field(r, "stack")))
    {
        let pin = field(row, "pin");
        if !pins.contains(&pin) {
            pins.push(pin);
        }
    }
    pins
}

/// Every gate over the measured rows: a message for each one that fails.
fn check(rows: &[Value]) -> Vec<String> {
    let mut failures = Vec::new();
    let reaper: Vec<&Value> = rows
        .iter()
        .filter(|r| field(r, "stack") == "reaper")
        .collect();
    if reaper.is_empty() {
        failures.push("no reaper measurement at all".to_owned());
    }
    for row in &reaper {
        let scenario = field(row, "scenario");
        let (limit, what) = match scenario {
            "connect_first_call" | "reconnect_0rtt" => continue,
            "cli_health" => {
                let p50 = number(row, "p50_us");
                if p50 >= CLI_P50_US {
                    failures.push(format!(
                        "reaper health as a process (pin {}): p50 {p50} µs, the ceiling is {CLI_P50_US} µs",
                        field(row, "pin")
                    ));
                }
                continue;
            }
            "unary_2k" | "completion_offline_miss" => (COMPLETION_P99_US, "completion"),
            _ => (UNARY_P99_US, "unary call"),
        };
        let p99 = number(row, "p99_us");
        if p99 >= limit {
            failures.push(format!(
                "{scenario} ({} in flight, pin {}): p99 {p99} µs, the promise for a {what} is under {limit} µs",
                number(row, "concurrency"),
                field(row, "pin")
            ));
        }
    }
    for pin in pins(rows) {
        if find(rows, "reaper", "cli_health", 1, pin).is_none() {
            failures.push(format!(
                "pin {pin}: no measurement of reaper health as a process to gate"
            ));
        }
        let hit = find(rows, "reaper", "unary_2k", 1, pin);
        let health = find(rows, "reaper", "health", 1, pin);
        // A gate that cannot be evaluated fails: a missing row must not read as a pass.
        for (row, what) in [(hit, "completion cache hit (unary_2k)"), (health, "Health")] {
            if row.is_none() {
                failures.push(format!(
                    "pin {pin}: no sequential reaper {what} measurement to gate"
                ));
            }
        }
        if let (Some(hit), Some(health)) = (hit, health) {
            let (hit_p99, health_p99) = (number(hit, "p99_us"), number(health, "p99_us"));
            if hit_p99 as f64 > HIT_OVER_HEALTH_P99 * health_p99 as f64 {
                failures.push(format!(
                    "pin {pin}: completion cache hit p99 {hit_p99} µs is more than {HIT_OVER_HEALTH_P99}x Health p99 {health_p99} µs of the same run"
                ));
            }
        }
        match (hit, find(rows, "tonic", "unary_2k", 1, pin)) {
            (Some(ours), Some(tonic)) => {
                let (ours, tonic) = (number(ours, "p50_us"), number(tonic, "p50_us"));
                if ours >= tonic {
                    failures.push(format!(
                        "pin {pin}: reaper unary_2k p50 {ours} µs is not lower than tonic's {tonic} µs in the same run"
                    ));
                }
            }
            (_, None) => failures.push(format!(
                "pin {pin}: no tonic measurement to compare reaper's unary p50 with"
            )),
            (None, Some(_)) => {}
        }
    }
    for scenario in ["repeat", "typing"] {
        match bridge_row(rows, scenario) {
            Some(row) => {
                let share = row["bridge_share_p50_us"].as_i64().unwrap_or(i64::MAX);
                if share >= BRIDGE_SHARE_P50_US {
                    failures.push(format!(
                        "lsp {scenario}: the bridge adds {share} µs at p50 to an inline completion, the ceiling is {BRIDGE_SHARE_P50_US} µs"
                    ));
                }
            }
            None => failures.push(format!(
                "no editor bridge measurement (reaper-bench lsp, {scenario}) to gate"
            )),
        }
    }
    check_chat(rows, &mut failures);
    failures
}

/// The chat gates: a message for each that fails.
fn check_chat(rows: &[Value], failures: &mut Vec<String>) {
    let chat = |bench: &str, key: &str, value: &str| {
        rows.iter().find(move |r| {
            field(r, "stack") == "chat" && field(r, "bench") == bench && field(r, key) == value
        })
    };
    match chat("chat-overhead", "path", "added") {
        Some(added) => {
            for (key, what) in [
                ("ttft_p50_us", "first token"),
                ("token_p50_us", "later token"),
            ] {
                let share = added[key].as_i64().unwrap_or(i64::MAX);
                if share >= CHAT_SHARE_P50_US {
                    failures.push(format!(
                        "chat: the daemon adds {share} µs to a chat's {what} at p50 against llama.cpp called directly, the ceiling is {CHAT_SHARE_P50_US} µs"
                    ));
                }
            }
        }
        None => {
            failures.push("no chat overhead measurement (reaper-bench chat) to gate".to_owned())
        }
    }
    let mut stream_pins: Vec<&str> = rows
        .iter()
        .filter(|r| field(r, "bench") == "chat-stream")
        .map(|r| field(r, "pin"))
        .collect();
    stream_pins.sort_unstable();
    stream_pins.dedup();
    if stream_pins.is_empty() {
        failures.push("no chat stream measurement (reaper-bench chat) to gate".to_owned());
    }
    for pin in stream_pins {
        let of = |path: &str| {
            rows.iter().find(|r| {
                field(r, "bench") == "chat-stream"
                    && field(r, "path") == path
                    && field(r, "pin") == pin
            })
        };
        match (of("reaper"), of("tonic")) {
            (Some(ours), Some(tonic)) => {
                let (ours, tonic) = (
                    ours["stream"]["p50_us"].as_u64().unwrap_or(u64::MAX),
                    tonic["stream"]["p50_us"].as_u64().unwrap_or(0),
                );
                if ours as f64 > CHAT_STREAM_OVER_TONIC_P50 * tonic as f64 {
                    failures.push(format!(
                        "chat stream, pin {pin}: p50 {ours} µs through reaperd, over {CHAT_STREAM_OVER_TONIC_P50}x tonic's {tonic} µs in the same run"
                    ));
                }
            }
            _ => failures.push(format!(
                "chat stream, pin {pin}: reaper's or tonic's measurement is missing"
            )),
        }
    }
    let priority = |scenario: &str| {
        rows.iter().find(|r| {
            field(r, "bench") == "chat-priority"
                && field(r, "scenario") == scenario
                && number(r, "llama_slots") == 1
        })
    };
    match (
        priority("chat, no priority"),
        priority("chat, priority (reserve + yield)"),
    ) {
        (Some(without), Some(with)) => {
            let p50 = |r: &Value| r["completion"]["p50_us"].as_u64().unwrap_or(u64::MAX);
            let (without, with) = (p50(without), p50(with));
            if with as f64 * CHAT_PRIORITY_SPEEDUP > without as f64 {
                failures.push(format!(
                    "chat priority: a completion during a chat took {with} µs at p50 with priority and {without} µs without; priority must be at least {CHAT_PRIORITY_SPEEDUP}x faster"
                ));
            }
        }
        _ => failures.push(
            "no chat priority measurement on a one-slot llama.cpp (reaper-bench chat) to gate"
                .to_owned(),
        ),
    }
}

/// The editor bridge's row for `scenario`.
fn bridge_row<'a>(rows: &'a [Value], scenario: &str) -> Option<&'a Value> {
    rows.iter()
        .find(|r| field(r, "stack") == "lsp" && field(r, "scenario") == scenario)
}

/// How the run compares with the goals in docs/perf.md (reported, not gated).
fn goals(rows: &[Value]) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(added) = rows
        .iter()
        .find(|r| field(r, "bench") == "chat-overhead" && field(r, "path") == "added")
    {
        for (key, what) in [
            ("ttft_p99_us", "first token"),
            ("token_p99_us", "later tokens"),
        ] {
            let share = added[key].as_i64().unwrap_or(i64::MAX);
            lines.push(format!(
                "chat: the daemon's share of the {what} under {CHAT_SHARE_P99_GOAL_US} µs at p99: {} ({share} µs)",
                if share < CHAT_SHARE_P99_GOAL_US { "met" } else { "missed" }
            ));
        }
    }
    for scenario in ["repeat", "typing"] {
        if let Some(row) = bridge_row(rows, scenario) {
            let share = row["bridge_share_p99_us"].as_i64().unwrap_or(i64::MAX);
            lines.push(format!(
                "lsp {scenario}: the bridge's share under {BRIDGE_SHARE_P99_GOAL_US} µs at p99: {} ({share} µs; p50 {} µs)",
                if share < BRIDGE_SHARE_P99_GOAL_US { "met" } else { "missed" },
                row["bridge_share_p50_us"]
            ));
        }
    }
    for pin in pins(rows) {
        let Some(ours) = find(rows, "reaper", "unary_2k", 1, pin) else {
            continue;
        };
        let p50 = number(ours, "p50_us");
        let mark = |met: bool| if met { "met" } else { "missed" };
        if let Some(udp) = find(rows, "udp", "unary_2k", 1, pin) {
            // Issue 14: 1.6x the floor with both on one CPU, 1.3x across CPUs.
            let floor = number(udp, "p50_us");
            let limit = if pin == "same" { 1.6 } else { 1.3 };
            let ratio = p50 as f64 / floor.max(1) as f64;
            lines.push(format!(
                "pin {pin}: unary p50 within {limit}x the UDP floor: {} ({p50} µs, floor {floor} µs, {ratio:.2}x)",
                mark(ratio <= limit)
            ));
        }
        if let (Some(ours), Some(quinn)) = (
            find(rows, "reaper", "connect_first_call", 1, pin),
            find(rows, "quinn", "connect_first_call", 1, pin),
        ) {
            let (ours, quinn) = (number(ours, "p50_us"), number(quinn, "p50_us"));
            let ratio = ours as f64 / quinn.max(1) as f64;
            lines.push(format!(
                "pin {pin}: new connection + first call within 1.2x quinn's: {} ({ours} µs against {quinn} µs, {ratio:.2}x)",
                mark(ratio <= 1.2)
            ));
        }
        if let Some(reconnect) = find(rows, "reaper", "reconnect_0rtt", 1, pin) {
            let p50 = number(reconnect, "p50_us");
            let first = find(rows, "reaper", "connect_first_call", 1, pin)
                .map_or(String::new(), |r| {
                    format!(", a first connection {} µs", number(r, "p50_us"))
                });
            lines.push(format!(
                "pin {pin}: 0-RTT reconnect + first call under {RECONNECT_GOAL_US} µs: {} ({p50} µs p50{first})",
                mark(p50 < RECONNECT_GOAL_US)
            ));
        }
        if let Some(cli) = find(rows, "reaper", "cli_health", 1, pin) {
            let (p50, max) = (number(cli, "p50_us"), number(cli, "max_us"));
            lines.push(format!(
                "pin {pin}: reaper health as a process under {} ms: {} (median {p50} µs, max {max} µs)",
                CLI_GOAL_US / 1000,
                mark(p50 < CLI_GOAL_US)
            ));
        }
        for peer in ["quinn", "http1", "tonic"] {
            if let Some(theirs) = find(rows, peer, "unary_2k", 1, pin) {
                let theirs = number(theirs, "p50_us");
                lines.push(format!(
                    "pin {pin}: unary p50 ahead of {peer}: {} ({p50} µs against {theirs} µs)",
                    mark(p50 < theirs)
                ));
            }
        }
        for concurrency in [16, 64] {
            let ours = find(rows, "reaper", "unary_2k", concurrency, pin);
            if let (Some(ours), Some(quinn)) =
                (ours, find(rows, "quinn", "unary_2k", concurrency, pin))
            {
                let ratio = rate(ours) / rate(quinn).max(1.0);
                lines.push(format!(
                    "pin {pin}: {concurrency} in flight at 1.5x quinn's calls/s: {} ({:.0} against {:.0}, {ratio:.2}x)",
                    mark(ratio >= 1.5),
                    rate(ours),
                    rate(quinn)
                ));
            }
        }
        if let Some(health) = find(rows, "reaper", "health", 1, pin) {
            let (hit, health) = (number(ours, "p99_us"), number(health, "p99_us"));
            lines.push(format!(
                "pin {pin}: cache hit p99 within 1.2x Health's: {} ({hit} µs against {health} µs)",
                mark(hit as f64 <= 1.2 * health as f64)
            ));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(scenario: &str, pin: &str, p99: u64) -> Value {
        json!({"stack": "reaper", "scenario": scenario, "pin": pin, "concurrency": 1, "connections": 1, "p50_us": 40, "p99_us": p99})
    }

    fn cli(pin: &str, p50: u64) -> Value {
        json!({"stack": "reaper", "scenario": "cli_health", "pin": pin, "concurrency": 1, "connections": 1, "p50_us": p50, "p99_us": 3 * p50, "max_us": 4 * p50})
    }

    fn tonic(pin: &str, p50: u64) -> Value {
        json!({"stack": "tonic", "scenario": "unary_2k", "pin": pin, "concurrency": 1, "connections": 1, "p50_us": p50, "p99_us": 2 * p50})
    }

    fn bridge(scenario: &str, share_p50: i64) -> Value {
        json!({"stack": "lsp", "scenario": scenario, "bridge_share_p50_us": share_p50, "bridge_share_p99_us": 3 * share_p50})
    }

    /// Chat rows as `reaper-bench chat --json` prints them, marked as `measure` marks them.
    fn chat(first: i64, later: i64, stream: [u64; 2], priority: [u64; 2]) -> Vec<Value> {
        let mut rows = vec![
            json!({"bench": "chat-overhead", "path": "added", "ttft_p50_us": first, "ttft_p99_us": 2 * first, "token_p50_us": later, "token_p99_us": 2 * later}),
            json!({"bench": "chat-stream", "path": "reaper", "pin": "same", "stream": {"p50_us": stream[0]}}),
            json!({"bench": "chat-stream", "path": "tonic", "pin": "same", "stream": {"p50_us": stream[1]}}),
            json!({"bench": "chat-priority", "scenario": "chat, no priority", "llama_slots": 1, "completion": {"p50_us": priority[0]}}),
            json!({"bench": "chat-priority", "scenario": "chat, priority (reserve + yield)", "llama_slots": 1, "completion": {"p50_us": priority[1]}}),
        ];
        for row in &mut rows {
            row["stack"] = Value::from("chat");
        }
        rows
    }

    #[test]
    fn the_chat_gates_fail_with_their_figures_or_without_them() {
        let fine = chat(215, 91, [5_900, 7_500], [7_700_000, 350_000]);
        let mut failures = Vec::new();
        check_chat(&fine, &mut failures);
        assert!(failures.is_empty(), "{failures:?}");
        let slow = chat(1_500, 91, [12_000, 7_500], [700_000, 400_000]);
        let mut failures = Vec::new();
        check_chat(&slow, &mut failures);
        assert_eq!(failures.len(), 3, "{failures:?}");
        assert!(failures[0].contains("first token") && failures[0].contains("1500"));
        assert!(failures[1].contains("12000") && failures[1].contains("7500"));
        assert!(failures[2].contains("400000") && failures[2].contains("700000"));
        let mut failures = Vec::new();
        check_chat(&[], &mut failures);
        assert_eq!(failures.len(), 3, "missing measurements fail: {failures:?}");
        let goals = goals(&fine);
        assert!(
            goals
                .iter()
                .any(|g| g.contains("first token") && g.contains("met (430 µs)")),
            "{goals:?}"
        );
    }

    #[test]
    fn the_bridge_gate_fails_with_its_figures_or_without_them() {
        let slow = check(&[bridge("repeat", 150), bridge("typing", 1_200)]);
        assert!(
            slow.iter()
                .any(|f| f.contains("lsp typing") && f.contains("1200")),
            "{slow:?}"
        );
        assert!(!slow.iter().any(|f| f.contains("lsp repeat")), "{slow:?}");
        let missing = check(&[bridge("repeat", 150)]);
        assert!(
            missing
                .iter()
                .any(|f| f.contains("no editor bridge") && f.contains("typing")),
            "{missing:?}"
        );
        let goals = goals(&[bridge("repeat", 150), bridge("typing", 200)]);
        assert_eq!(goals.len(), 2, "{goals:?}");
        assert!(
            goals[0].contains("met") && goals[1].contains("missed"),
            "{goals:?}"
        );
    }

    #[test]
    fn passing_figures_pass() {
        let rows = [
            row("health", "same", 100),
            row("unary_2k", "same", 140),
            row("completion_offline_miss", "same", 900),
            tonic("same", 60),
            cli("same", 4_400),
            bridge("repeat", 150),
            bridge("typing", 150),
        ];
        let rows: Vec<Value> = rows
            .into_iter()
            .chain(chat(215, 91, [5_900, 7_500], [7_700_000, 350_000]))
            .collect();
        assert!(check(&rows).is_empty(), "{:?}", check(&rows));
    }

    #[test]
    fn each_gate_fails_with_its_figures() {
        let slow_unary = check(&[row("health", "same", 12_000), row("unary_2k", "same", 100)]);
        assert!(
            slow_unary
                .iter()
                .any(|f| f.contains("health") && f.contains("12000")),
            "{slow_unary:?}"
        );
        let slow_completion = check(&[
            row("health", "same", 100_000 - 1),
            row("completion_offline_miss", "split", 150_000),
        ]);
        assert!(
            slow_completion
                .iter()
                .any(|f| f.contains("completion_offline_miss")),
            "{slow_completion:?}"
        );
        let slow_hit = check(&[
            row("health", "split", 100),
            row("unary_2k", "split", 151),
            tonic("split", 60),
        ]);
        assert!(
            slow_hit.iter().any(|f| f.contains("cache hit")),
            "{slow_hit:?}"
        );
        let behind_tonic = check(&[
            row("health", "same", 100),
            row("unary_2k", "same", 100),
            tonic("same", 40),
        ]);
        assert!(
            behind_tonic
                .iter()
                .any(|f| f.contains("tonic's 40 µs") && f.contains("p50 40 µs")),
            "{behind_tonic:?}"
        );
        let no_tonic = check(&[row("health", "same", 100), row("unary_2k", "same", 100)]);
        assert!(
            no_tonic.iter().any(|f| f.contains("no tonic measurement")),
            "{no_tonic:?}"
        );
        let no_hit = check(&[row("health", "split", 100), tonic("split", 60)]);
        assert!(
            no_hit
                .iter()
                .any(|f| f.contains("pin split: no sequential reaper completion cache hit")),
            "{no_hit:?}"
        );
        let slow_cli = check(&[cli("same", 80_000)]);
        assert!(
            slow_cli
                .iter()
                .any(|f| f.contains("reaper health as a process") && f.contains("80000")),
            "{slow_cli:?}"
        );
        let no_cli = check(&[row("health", "split", 100), tonic("split", 60)]);
        assert!(
            no_cli
                .iter()
                .any(|f| f.contains("pin split: no measurement of reaper health as a process")),
            "{no_cli:?}"
        );
        let nothing = check(&[]);
        assert!(
            nothing
                .iter()
                .any(|f| f.contains("no reaper measurement at all")),
            "no measurement is a failure, not a pass: {nothing:?}"
        );
    }

    #[test]
    fn goals_are_reported_against_the_peers_of_the_same_placement() {
        let udp = json!({"stack": "udp", "scenario": "unary_2k", "pin": "same", "concurrency": 1, "p50_us": 11});
        let lines = goals(&[
            row("unary_2k", "same", 100),
            udp,
            tonic("same", 60),
            tonic("split", 30),
            cli("same", 4_400),
        ]);
        assert!(
            lines
                .iter()
                .any(|l| l.contains("under 10 ms: met (median 4400 µs, max 17600 µs)")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("UDP floor: missed (40 µs, floor 11 µs")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("ahead of tonic: met (40 µs against 60 µs)")),
            "{lines:?}"
        );
        assert!(lines.iter().all(|l| l.starts_with("pin same")), "{lines:?}");
    }
}
