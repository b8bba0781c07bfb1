//! `reaper-bench eval-offline`: how good the offline provider's completions are.
//!
//! Indexes most of the files of real crates (from the local cargo registry, present on any
//! machine that built this workspace), then completes lines of the files it did not index, cut
//! at random points, with the file's earlier text as the prefix and the lines after the cut's
//! line as the suffix (what an editor has while the user types a line). Reports the
//! exact-rest-of-line rate, characters accepted per request, how confidence relates to
//! correctness (per confidence decile, and for the answers at 0.5 or more, which an editor
//! shows), and the same figures for two baselines measured in the same run on the same cuts:
//! the longest match of the prefix tail in the indexed files, continued to the end of the line
//! as its first occurrence continues (naive), or as most of its occurrences do (voting, whose
//! confidence is the share of the occurrences that agree). `--features-csv` writes the
//! evidence behind every offline answer, which is what the offline confidence was fitted on.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use reaper_offline::{predict_explained, Corpus, CorpusBuilder, Evidence};

/// Settings of one evaluation.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Crates to evaluate on, by name, from ~/.cargo/registry/src (newest version found).
    #[arg(long = "crate", default_values_t = DEFAULT_CRATES.map(String::from))]
    crates: Vec<String>,
    /// Or a directory of sources to use instead of registry crates.
    #[arg(long, value_name = "DIR")]
    source: Option<PathBuf>,
    /// Share of each crate's files that is indexed; the rest is completed.
    #[arg(long, default_value_t = 0.8)]
    train_fraction: f64,
    /// Cut points per held-out file. A small crate holds out 5 to 15 files: with fewer cuts,
    /// the answers shown at confidence 0.5 or more are too few to tell 70% from 60% exact.
    #[arg(long, default_value_t = 100)]
    cuts_per_file: usize,
    /// Random seed (file split and cut points).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object per crate.
    #[arg(long)]
    json: bool,
    /// Write one CSV row per request: the evidence behind the offline answer and whether it
    /// was right (what the confidence formula in `offline/src/model.rs` was fitted on).
    #[arg(long, value_name = "FILE")]
    features_csv: Option<PathBuf>,
}

/// Crates of different kinds (async runtime, TLS, QUIC, HTTP, serialization, regex engine,
/// HTTP/2, tracing): the confidence must mean the same on each.
const DEFAULT_CRATES: [&str; 8] = [
    "tokio",
    "rustls",
    "quinn-proto",
    "hyper",
    "regex-automata",
    "serde",
    "h2",
    "tracing-subscriber",
];

/// Confidence from which an editor shows a completion.
const SHOWN: f32 = 0.5;

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
    /// Whether the answers carry a confidence (the naive baseline's do not).
    calibrated: bool,
}

impl Tally {
    fn new(calibrated: bool) -> Tally {
        Tally {
            calibrated,
            ..Tally::default()
        }
    }

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

    /// (answered, exact, prefix-correct) at confidence `SHOWN` or more.
    fn shown(&self) -> (u64, u64, u64) {
        let from = (SHOWN * 10.0) as usize;
        self.buckets[from..]
            .iter()
            .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
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
        let (shown, shown_exact, shown_start) = self.shown();
        let at_shown = self.calibrated.then(|| {
            serde_json::json!({
                "answered_pct": Self::pct(shown, self.requests),
                "exact_pct": Self::pct(shown_exact, shown),
                "good_start_pct": Self::pct(shown_start, shown),
            })
        });
        serde_json::json!({
            "requests": self.requests,
            "answered_pct": Self::pct(self.answered, self.requests),
            "exact_rest_of_line_pct": Self::pct(self.exact, self.requests),
            "wrong_pct": Self::pct(self.answered - self.prefix_correct, self.requests),
            "precision_exact_pct": Self::pct(self.exact, self.answered),
            "accepted_chars_per_request": self.accepted_chars as f64 / self.requests.max(1) as f64,
            "at_confidence_0_5": at_shown,
            "calibration": self.calibrated.then_some(buckets),
        })
    }

    /// One line of the summary table.
    fn summary(&self, name: &str) -> String {
        let (shown, shown_exact, shown_start) = self.shown();
        let at_shown = if self.calibrated {
            format!(
                "{:>8.1}% {:>6.1}% {:>6.1}%",
                Self::pct(shown, self.requests),
                Self::pct(shown_exact, shown),
                Self::pct(shown_start, shown)
            )
        } else {
            format!("{:>9} {:>7} {:>7}", "-", "-", "-")
        };
        format!(
            "  {name:<10} {:>7.1}% {:>6.1}% {:>6.1}% {:>8.1}% {:>6.1} | {at_shown}",
            Self::pct(self.answered, self.requests),
            Self::pct(self.exact, self.requests),
            Self::pct(self.answered - self.prefix_correct, self.requests),
            Self::pct(self.exact, self.answered),
            self.accepted_chars as f64 / self.requests.max(1) as f64,
        )
    }
}

/// The calibration tables of `tallies` side by side, one row per confidence decile.
fn calibration_table(tallies: &[(&str, &Tally)]) -> String {
    let mut out = String::from("  confidence");
    for (name, _) in tallies {
        out += &format!(" | {name:<8} answered  exact  start");
    }
    for (i, _) in tallies[0].1.buckets.iter().enumerate() {
        out += &format!("\n  {:.1}-{:.1}   ", i as f64 / 10.0, (i + 1) as f64 / 10.0);
        for (_, t) in tallies {
            let (n, exact, start) = t.buckets[i];
            out += &format!(
                " |    {n:>13} {:>5.0}% {:>5.0}%",
                Tally::pct(exact, n),
                Tally::pct(start, n)
            );
        }
    }
    out
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
    let mut csv = match &args.features_csv {
        Some(path) => {
            let mut file = std::io::BufWriter::new(
                std::fs::File::create(path)
                    .with_context(|| format!("cannot create {}", path.display()))?,
            );
            writeln!(file, "{CSV_HEADER}")?;
            Some(file)
        }
        None => None,
    };
    for (name, dir) in sources {
        evaluate(args, &name, &dir, csv.as_mut().map(|f| f as &mut dyn Write))?;
    }
    if let Some(mut file) = csv {
        file.flush()?;
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

/// Columns of `--features-csv`: the crate, the [`Evidence`] of the offline answer (empty when
/// it was silent), its confidence, the length of the text proposed and of the truth, whether
/// the cursor was inside a word, and whether the answer was exactly right or a correct start.
const CSV_HEADER: &str = "crate,answered,matched,local_len,corpus_len,occurrences,weight,total,\
continuations,majority,local_agrees,line_before,text_len,truth_len,mid_word,confidence,exact,\
good_start";

fn csv_row(
    name: &str,
    answer: Option<(&str, f32, &Evidence)>,
    prefix: &str,
    truth: &str,
) -> String {
    let mid_word = prefix
        .bytes()
        .last()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    let Some((text, confidence, e)) = answer else {
        return format!(
            "{name},0,,,,,,,,,,,,{},{},,,",
            truth.len(),
            u8::from(mid_word)
        );
    };
    let local_agrees = match e.local_agrees {
        None => -1,
        Some(agrees) => i32::from(agrees),
    };
    format!(
        "{name},1,{},{},{},{},{},{},{},{},{local_agrees},{},{},{},{},{confidence},{},{}",
        e.matched,
        e.local_len,
        e.corpus_len,
        e.occurrences,
        e.weight,
        e.total,
        e.continuations,
        u8::from(e.majority),
        e.line_before,
        text.len(),
        truth.len(),
        u8::from(mid_word),
        u8::from(text == truth),
        u8::from(truth.starts_with(text)),
    )
}

fn evaluate(
    args: &EvalArgs,
    name: &str,
    dir: &Path,
    mut csv: Option<&mut dyn Write>,
) -> anyhow::Result<()> {
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

    let mut model = Tally::new(true);
    let mut voting = Tally::new(true);
    let mut naive = Tally::new(false);
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
            let prediction = predict_explained(Some(&corpus), prefix, suffix, None);
            latency.saturating_record(t.elapsed().as_micros() as u64);
            model.record(
                prediction
                    .as_ref()
                    .map(|(p, _)| (p.text.as_str(), p.confidence)),
                truth,
            );
            if let Some(csv) = csv.as_mut() {
                let answer = prediction
                    .as_ref()
                    .map(|(p, e)| (p.text.as_str(), p.confidence, e));
                writeln!(csv, "{}", csv_row(name, answer, prefix, truth))?;
            }
            let baseline = voting_longest_match(&corpus, prefix);
            voting.record(baseline.as_ref().map(|(t, c)| (t.as_str(), *c)), truth);
            let baseline = naive_longest_match(&corpus, prefix);
            naive.record(baseline.as_deref().map(|t| (t, 0.0)), truth);
        }
    }

    let version = dir
        .file_name()
        .and_then(|f| f.to_str())
        .and_then(|f| f.strip_prefix(&format!("{name}-")))
        .unwrap_or("");
    let report = serde_json::json!({
        "crate": name,
        "version": version,
        "indexed_files": train.len(),
        "indexed_lines": lines,
        "indexed_mb": bytes as f64 / 1e6,
        "index_build_ms": index_ms,
        "index_memory_mb_per_indexed_mb": corpus.memory_bytes() as f64 / bytes.max(1) as f64,
        "held_out_files": test.len(),
        "predict_p50_us": latency.value_at_quantile(0.5),
        "predict_p99_us": latency.value_at_quantile(0.99),
        "offline": model.json(),
        "voting_longest_match": voting.json(),
        "naive_longest_match": naive.json(),
    });
    if args.json {
        println!("{report}");
        return Ok(());
    }
    println!(
        "{name} {version}: {lines} lines in {} files indexed ({:.1} MB, {index_ms:.0} ms), \
         {} held-out files, {} requests; predict p50 {} µs, p99 {} µs",
        train.len(),
        bytes as f64 / 1e6,
        test.len(),
        model.requests,
        latency.value_at_quantile(0.5),
        latency.value_at_quantile(0.99),
    );
    println!(
        "  {:<10} {:>8} {:>7} {:>7} {:>9} {:>6} | at confidence >= {SHOWN}: answered, exact, start",
        "", "answered", "exact", "wrong", "precision", "chars"
    );
    println!("{}", model.summary("offline"));
    println!("{}", voting.summary("voting"));
    println!("{}", naive.summary("naive"));
    println!(
        "{}\n",
        calibration_table(&[("offline", &model), ("voting", &voting)])
    );
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

/// The last 256 bytes of `prefix` (whole characters): the query of both baselines, as of the
/// model.
fn query_of(prefix: &str) -> &[u8] {
    let mut start = prefix.len().saturating_sub(256);
    while !prefix.is_char_boundary(start) {
        start += 1;
    }
    &prefix.as_bytes()[start..]
}

/// What follows `pos` in the corpus, to the end of its line (or file).
fn rest_of_line(corpus: &Corpus, pos: usize) -> String {
    let rest = corpus.rest(pos);
    let end = rest
        .iter()
        .position(|&b| b == b'\n' || b == 0)
        .unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end]).trim_end().to_owned()
}

/// The naive baseline: the longest match of the prefix tail, and what followed its first
/// occurrence, to the end of the line. No voting, no abstaining.
fn naive_longest_match(corpus: &Corpus, prefix: &str) -> Option<String> {
    let (len, range) = corpus.longest_suffix_match(query_of(prefix));
    if len == 0 {
        return None;
    }
    let text = rest_of_line(corpus, corpus.positions(&range, 1).next()? + len);
    (!text.is_empty()).then_some(text)
}

/// The voting baseline: the longest match of the prefix tail, and the continuation (to the end
/// of the line) that most of its occurrences have, with the share of occurrences that have it
/// as its confidence. No backoff, no shared starts, no abstaining.
fn voting_longest_match(corpus: &Corpus, prefix: &str) -> Option<(String, f32)> {
    let (len, range) = corpus.longest_suffix_match(query_of(prefix));
    if len == 0 {
        return None;
    }
    let mut votes: HashMap<String, u32> = HashMap::new();
    let mut total = 0;
    for pos in corpus.positions(&range, usize::MAX) {
        *votes.entry(rest_of_line(corpus, pos + len)).or_default() += 1;
        total += 1;
    }
    let (text, n) = votes
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))?;
    (!text.is_empty()).then(|| (text, n as f32 / total as f32))
}
