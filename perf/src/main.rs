//! `reaper-perf`: the performance gates CI runs.
//!
//! Runs `reaper-bench --quick --json` (from beside this binary: build both with
//! `cargo build --release`), then fails the build, saying why with the figures, when:
//! - a unary call's p99 is 10 ms or more, or a completion's p99 100 ms or more (the product's
//!   promise), for any reaper scenario, under any placement;
//! - the completion cache hit's p99 is more than 1.5x the p99 of `Health.check` measured in the
//!   same run under the same placement (a hit must cost what a plain call costs).
//!
//! Not gated yet, and said so in the output: reaper's unary p50 against tonic's (no tonic stack
//! in reaper-bench yet).

use std::process::Command;

use anyhow::{bail, Context};
use serde_json::Value;

/// The promise for any unary call.
const UNARY_P99_US: u64 = 10_000;
/// The promise for a completion.
const COMPLETION_P99_US: u64 = 100_000;
/// A cache hit may cost at most this multiple of a plain call, at p99.
const HIT_OVER_HEALTH_P99: f64 = 1.5;

fn main() {
    match run() {
        Ok(()) => {}
        Err(error) => {
            eprintln!("reaper-perf: {error:#}");
            std::process::exit(1);
        }
    }
}

fn run() -> anyhow::Result<()> {
    let bench = std::env::current_exe()?.with_file_name("reaper-bench");
    let output = Command::new(&bench)
        .args(["--quick", "--json"])
        .args(std::env::args().skip(1))
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
    let failures = check(&rows);
    println!(
        "not gated yet: reaper's unary p50 against tonic's (reaper-bench has no tonic stack yet)"
    );
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
        bail!("{} gate(s) failed", failures.len())
    }
}

fn field<'a>(row: &'a Value, name: &str) -> &'a str {
    row[name].as_str().unwrap_or("")
}

fn number(row: &Value, name: &str) -> u64 {
    row[name].as_u64().unwrap_or(0)
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
            "connect_first_call" => continue,
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
    for pin in ["same", "split", "none"] {
        let find = |scenario: &str| {
            reaper.iter().find(|r| {
                field(r, "pin") == pin
                    && field(r, "scenario") == scenario
                    && number(r, "concurrency") == 1
            })
        };
        if let (Some(hit), Some(health)) = (find("unary_2k"), find("health")) {
            let (hit_p99, health_p99) = (number(hit, "p99_us"), number(health, "p99_us"));
            if hit_p99 as f64 > HIT_OVER_HEALTH_P99 * health_p99 as f64 {
                failures.push(format!(
                    "pin {pin}: completion cache hit p99 {hit_p99} µs is more than {HIT_OVER_HEALTH_P99}x Health p99 {health_p99} µs of the same run"
                ));
            }
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(scenario: &str, pin: &str, p99: u64) -> Value {
        json!({"stack": "reaper", "scenario": scenario, "pin": pin, "concurrency": 1, "p99_us": p99})
    }

    #[test]
    fn passing_figures_pass() {
        let rows = [
            row("health", "same", 100),
            row("unary_2k", "same", 140),
            row("completion_offline_miss", "same", 900),
        ];
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
        let slow_hit = check(&[row("health", "split", 100), row("unary_2k", "split", 151)]);
        assert!(
            slow_hit.iter().any(|f| f.contains("cache hit")),
            "{slow_hit:?}"
        );
        assert_eq!(
            check(&[]).len(),
            1,
            "no measurement is a failure, not a pass"
        );
    }
}
