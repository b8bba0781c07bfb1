//! `reaper-bench eval-offline`: how good the offline provider's completions are.
//!
//! Indexes most of the files of real crates (from the local cargo registry, present on any
//! machine that built this workspace), then completes lines of the files it did not index, cut
//! at random points, with the file's earlier text as the prefix and the lines after the cut's
//! line as the suffix (what an editor has while the user types a line). Reports the
//! exact-rest-of-line rate, characters accepted per request, how confidence relates to
//! correctness, and the same figures for the naive baseline (longest match of the prefix tail
//! in the indexed files, continued to the end of the line) measured in the same run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use reaper_offline::{predict, Corpus, CorpusBuilder};

/// Settings of one evaluation.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Crates to evaluate on, by name, from ~/.cargo/registry/src (newest version found).
    #[arg(long = "crate", default_values_t = ["tokio".to_owned(), "rustls".to_owned(), "quinn-proto".to_owned()])]
    crates: Vec<String>,
    /// Or a directory of sources to use instead of registry crates.
    #[arg(long, value_name = "DIR")]
    source: Option<PathBuf>,
    /// Share of each crate's files that is indexed; the rest is completed.
    #[arg(long, default_value_t = 0.8)]
    train_fraction: f64,
    /// Cut points per held-out file.
    #[arg(long, default_value_t = 20)]
    cuts_per_file: usize,
    /// Random seed (file split and cut points).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object per crate.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Default, Clone)]
struct Tally {
    requests: u64,
    answered: u64,
    exact: u64,
    /// Answered with a correct start of the rest of the line (exact included).
    prefix_correct: u64,
    accepted_chars: u64,
    /// Per confidence decile: (answered, exact, prefix-correct).
    buckets: [(u64, u64, u64); 10],
}

impl Tally {
    fn record(&mut self, completion: Option<(&str, f32)>, truth: &str) {
        self.requests += 1;
        let Some((text, confidence)) = completion.filter(|(t, _)| !t.is_empty()) else {
            return;
        };
        self.answered += 1;
        let exact = text == truth;
        let good_start = truth.starts_with(text);
        let bucket = &mut self.buckets[((confidence * 10.0) as usize).min(9)];
        bucket.0 += 1;
        if exact {
            self.exact += 1;
            bucket.1 += 1;
        }
        if good_start {
            self.prefix_correct += 1;
            self.accepted_chars += text.len() as u64;
            bucket.2 += 1;
        }
    }

    fn pct(n: u64, d: u64) -> f64 {
        if d == 0 {
            0.0
        } else {
            100.0 * n as f64 / d as f64
        }
    }

    fn json(&self) -> serde_json::Value {
        let buckets: Vec<_> = self
            .buckets
            .iter()
            .enumerate()
            .filter(|(_, b)| b.0 > 0)
            .map(|(i, b)| {
                serde_json::json!({
                    "confidence": format!("{:.1}-{:.1}", i as f64 / 10.0, (i + 1) as f64 / 10.0),
                    "answered": b.0,
                    "exact_pct": Self::pct(b.1, b.0),
                    "good_start_pct": Self::pct(b.2, b.0),
                })
            })
            .collect();
        serde_json::json!({
            "requests": self.requests,
            "answered_pct": Self::pct(self.answered, self.requests),
            "exact_rest_of_line_pct": Self::pct(self.exact, self.requests),
            "wrong_pct": Self::pct(self.answered - self.prefix_correct, self.requests),
            "precision_exact_pct": Self::pct(self.exact, self.answered),
            "accepted_chars_per_request": self.accepted_chars as f64 / self.requests.max(1) as f64,
            "calibration": buckets,
        })
    }
}

/// Runs the evaluation and prints its report.
pub fn run(args: &EvalArgs) -> anyhow::Result<()> {
    let sources: Vec<(String, PathBuf)> = match &args.source {
        Some(dir) => vec![(dir.display().to_string(), dir.clone())],
        None => args
            .crates
            .iter()
            .map(|name| Ok((name.clone(), registry_crate(name)?)))
            .collect::<anyhow::Result<_>>()?,
    };
    for (name, dir) in sources {
        evaluate(args, &name, &dir)?;
    }
    Ok(())
}

pub fn registry_crate(name: &str) -> anyhow::Result<PathBuf> {
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let mut found: Vec<PathBuf> = Vec::new();
    for index in std::fs::read_dir(home.join("registry/src"))? {
        for entry in std::fs::read_dir(index?.path())? {
            let path = entry?.path();
            let file = path.file_name().and_then(|f| f.to_str()).unwrap_or("");
            if let Some(version) = file.strip_prefix(&format!("{name}-")) {
                if version.starts_with(|c: char| c.is_ascii_digit()) && !version.contains("-dev") {
                    found.push(path);
                }
            }
        }
    }
    found.sort();
    match found.pop() {
        Some(path) => Ok(path),
        None => bail!("crate {name} is not in the local cargo registry; pass --source DIR"),
    }
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = ignore::WalkBuilder::new(dir)
        .build()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "rs"))
        .map(|e| e.into_path())
        .collect();
    files.sort();
    files
}

fn evaluate(args: &EvalArgs, name: &str, dir: &Path) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut files = rust_files(dir);
    files.shuffle(&mut rng);
    let split = ((files.len() as f64) * args.train_fraction).round() as usize;
    let (train, test) = files.split_at(split.min(files.len()));

    let started = Instant::now();
    let mut builder = CorpusBuilder::default();
    let mut lines = 0usize;
    for path in train {
        let text = std::fs::read(path)?;
        lines += text.iter().filter(|&&b| b == b'\n').count();
        builder.add(path.clone(), &text);
    }
    let bytes = builder.len();
    let corpus = builder.build();
    let index_ms = started.elapsed().as_secs_f64() * 1000.0;

    let mut model = Tally::default();
    let mut naive = Tally::default();
    let mut latency = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3)?;
    for path in test {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        for _ in 0..args.cuts_per_file {
            let Some((prefix, truth, suffix)) = cut(&text, &mut rng) else {
                break;
            };
            let t = Instant::now();
            let prediction = predict(Some(&corpus), prefix, suffix, None);
            latency.saturating_record(t.elapsed().as_micros() as u64);
            model.record(
                prediction.as_ref().map(|p| (p.text.as_str(), p.confidence)),
                truth,
            );
            let baseline = naive_longest_match(&corpus, prefix);
            naive.record(baseline.as_deref().map(|t| (t, 0.0)), truth);
        }
    }

    let report = serde_json::json!({
        "crate": name,
        "indexed_files": train.len(),
        "indexed_lines": lines,
        "indexed_mb": bytes as f64 / 1e6,
        "index_build_ms": index_ms,
        "index_memory_mb_per_indexed_mb": corpus.memory_bytes() as f64 / bytes.max(1) as f64,
        "held_out_files": test.len(),
        "predict_p50_us": latency.value_at_quantile(0.5),
        "predict_p99_us": latency.value_at_quantile(0.99),
        "offline": model.json(),
        "naive_longest_match": naive.json(),
    });
    if args.json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

/// A random cut inside a non-blank line: (prefix, rest of the line, text after the line).
fn cut<'a>(text: &'a str, rng: &mut StdRng) -> Option<(&'a str, &'a str, &'a str)> {
    for _ in 0..100 {
        let mut at = rng.random_range(0..text.len().max(1));
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
        let truth = text[at..line_end].trim_end();
        if truth.trim().is_empty() {
            continue;
        }
        return Some((&text[..at], truth, &text[line_end..]));
    }
    None
}

/// The baseline: the longest match of the prefix tail, and what followed its first
/// occurrence, to the end of the line. No voting, no abstaining.
fn naive_longest_match(corpus: &Corpus, prefix: &str) -> Option<String> {
    let mut start = prefix.len().saturating_sub(256);
    while !prefix.is_char_boundary(start) {
        start += 1;
    }
    let query = &prefix.as_bytes()[start..];
    let (len, range) = corpus.longest_suffix_match(query);
    if len == 0 {
        return None;
    }
    let pos = corpus.positions(range, 1).next()? + len;
    let rest = &corpus.text()[pos..];
    let end = rest
        .iter()
        .position(|&b| b == b'\n' || b == 0)
        .unwrap_or(rest.len());
    let text = String::from_utf8_lossy(&rest[..end]).trim_end().to_owned();
    (!text.is_empty()).then_some(text)
}
