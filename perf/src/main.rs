//! The CI performance gates: not built yet.
//!
//! They arrive with the benchmark issue (reaper-bench against peer stacks in one run, gates on
//! p99 ceilings and on ratios). Until then this binary says so and fails, so nobody mistakes it
//! for a passing gate.

fn main() {
    eprintln!(
        "reaper-perf: the performance gates are not built yet; `reaper-bench` measures Health.check meanwhile"
    );
    std::process::exit(2);
}
