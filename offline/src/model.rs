//! Predicting the rest of a line from the user's own code.
//!
//! The model is the longest match of the text before the cursor, found in two places: the
//! workspace's suffix array and the buffer itself (the text before the cursor and the lines
//! below its line, the best evidence of what this file repeats: adding the lines below raised
//! the exact rate by 1 to 5.5 points on every crate measured, `docs/offline.md`). Every occurrence of that longest match votes for
//! what followed it up to the end of its line; the daemon proposes the continuation most of the
//! votes agree on, or the longest start most of them share, and says how likely that is to be
//! exactly the rest of the line (a logistic function of the evidence, fitted on real crates:
//! see [`Evidence`] and `confidence`). When the votes scatter it stays silent rather than
//! guess; `docs/offline.md` has the measured accuracy and how confidence relates to it.

use std::collections::HashMap;
use std::path::Path;

use memchr::memmem;
use reaper_core::text::{head, tail};

use crate::corpus::{Corpus, Hits};

/// Bytes of the prefix used as the query.
const MAX_QUERY: usize = 256;
/// Shortest match worth proposing anything on.
const MIN_MATCH: usize = 8;
/// Occurrences that vote, at most, from each source.
const MAX_VOTERS: usize = 64;
/// Longest continuation proposed.
const MAX_COMPLETION: usize = 200;
/// Bytes of the prefix searched for earlier occurrences in the same buffer.
const MAX_LOCAL: usize = 256 * 1024;
/// Share of votes a proposal needs.
const MIN_SHARE: f64 = 0.5;
/// Weight of an occurrence in the buffer being edited, against one elsewhere in the workspace.
const LOCAL_WEIGHT: f64 = 2.0;

/// A proposed completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Text to insert at the cursor.
    pub text: String,
    /// How likely it is to be right, in `[0, 1]`.
    pub confidence: f32,
}

/// What a prediction was based on: the figures its confidence is computed from, exposed so
/// that `reaper-bench eval-offline` can relate them to how often the proposal was right.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evidence {
    /// Length of the longest match of the text before the cursor, in bytes.
    pub matched: usize,
    /// Length of the longest match in the buffer's earlier text.
    pub local_len: usize,
    /// Length of the longest match in the index.
    pub corpus_len: usize,
    /// Occurrences of the longest match that voted (buffer and index).
    pub occurrences: usize,
    /// Weight of the votes behind the proposal.
    pub weight: f64,
    /// Weight of all votes (every level of backoff).
    pub total: f64,
    /// Distinct continuations voted for.
    pub continuations: usize,
    /// Whether a whole continuation won; `false` when only a start that most votes share was.
    pub majority: bool,
    /// Whether the buffer's own occurrences, if any, vote mostly for a continuation that
    /// starts with the proposal.
    pub local_agrees: Option<bool>,
    /// Bytes of the cursor's line before the cursor.
    pub line_before: usize,
    /// Bytes of the text proposed.
    pub proposed: usize,
}

/// Predicts the rest of the line at the end of `prefix`. `None` when the evidence is too thin
/// or too divided. `own_file` is the file being edited: its saved copy in the index is not
/// evidence (the buffer, newer, already is).
pub fn predict(
    corpus: Option<&Corpus>,
    prefix: &str,
    suffix: &str,
    own_file: Option<&Path>,
) -> Option<Prediction> {
    predict_explained(corpus, prefix, suffix, own_file).map(|(p, _)| p)
}

/// [`predict`], with the evidence behind the prediction.
pub fn predict_explained(
    corpus: Option<&Corpus>,
    prefix: &str,
    suffix: &str,
    own_file: Option<&Path>,
) -> Option<(Prediction, Evidence)> {
    // NUL separates files in the index: a query must not contain one.
    let prefix = prefix.rsplit('\0').next().unwrap_or("");
    let query = tail(prefix, MAX_QUERY).as_bytes();
    if query.is_empty() {
        return None;
    }
    let local_text = tail(prefix, MAX_LOCAL).as_bytes();
    // Earlier occurrences only: the query's own position is at the very end.
    let local_haystack = &local_text[..local_text.len() - 1];
    // The buffer's text after the cursor is evidence too (the lines below often repeat the
    // pattern being typed); not the rest of the cursor's own line, which is what is predicted
    // against.
    let later = suffix.split_once('\n').map_or("", |(_, rest)| rest);
    let later = head(later, MAX_LOCAL).as_bytes();
    let local_len =
        longest_local_match(local_haystack, query).max(longest_local_match(later, query));
    let (corpus_len, hits) = corpus.map_or((0, Hits::default()), |c| {
        longest_foreign_match(c, query, own_file)
    });
    let matched = local_len.max(corpus_len);
    if matched < MIN_MATCH.min(query.len()) {
        return None;
    }

    // Every occurrence of the longest match votes; so do occurrences of shorter tails (backoff),
    // with less weight, so one odd repetition of a long context cannot outvote the usual
    // continuation of a slightly shorter one.
    let mut votes: HashMap<&[u8], f64> = HashMap::new();
    let mut local_votes: HashMap<&[u8], f64> = HashMap::new();
    let mut total = 0.0;
    let mut occurrences = 0;
    for (level, scale) in [(matched, 1.0), (matched * 3 / 4, 0.5), (matched / 2, 0.25)] {
        if level < MIN_MATCH.min(query.len()) || (level < matched && level == 0) {
            continue;
        }
        let needle = &query[query.len() - level..];
        if level <= local_len {
            let earlier = memmem::find_iter(local_haystack, needle)
                .take(MAX_VOTERS)
                .map(|start| continuation(local_text, start + level));
            let below = memmem::find_iter(later, needle)
                .take(MAX_VOTERS)
                .map(|start| continuation(later, start + level));
            for cont in earlier.chain(below) {
                *votes.entry(cont).or_default() += LOCAL_WEIGHT * scale;
                *local_votes.entry(cont).or_default() += scale;
                total += LOCAL_WEIGHT * scale;
                occurrences += usize::from(level == matched);
            }
        }
        if let Some(corpus) = corpus.filter(|_| level <= corpus_len) {
            let found;
            let at = if level == corpus_len {
                &hits
            } else {
                found = corpus.find(needle);
                &found
            };
            for start in corpus.positions(at, MAX_VOTERS) {
                let end = start + level;
                // A match that ends its file says nothing about what comes next.
                if corpus.byte(end).is_none_or(|b| b == 0) {
                    continue;
                }
                if own_file.is_some_and(|own| corpus.file_at(start).is_some_and(|f| f == own)) {
                    continue;
                }
                let cont = continuation(corpus.rest(end), 0);
                *votes.entry(cont).or_default() += scale;
                total += scale;
                occurrences += usize::from(level == matched);
            }
        }
    }
    let (best, weight, majority) = agreed_continuation(&votes, total)?;
    let text = trim_against_suffix(best, suffix);
    // A cut at a byte limit may split a character: keep the whole characters before it.
    let text = match std::str::from_utf8(text) {
        Ok(text) => text,
        Err(e) => std::str::from_utf8(&text[..e.valid_up_to()]).ok()?,
    }
    .trim_end();
    if text.trim().is_empty() {
        return None;
    }
    let local_agrees = local_votes
        .iter()
        .max_by(|a, b| a.1.total_cmp(b.1).then_with(|| b.0.cmp(a.0)))
        .map(|(c, _)| c.starts_with(text.as_bytes()));
    let evidence = Evidence {
        matched,
        local_len,
        corpus_len,
        occurrences,
        weight,
        total,
        continuations: votes.len(),
        majority,
        local_agrees,
        line_before: query.len() - query.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1),
        proposed: text.len(),
    };
    let prediction = Prediction {
        text: text.to_owned(),
        confidence: confidence(&evidence),
    };
    Some((prediction, evidence))
}

/// The longest match of `query`'s tail in `corpus` that occurs live (not only in a changed
/// file's old copy) and outside `own_file`, and where it occurs. The saved copy of the file being edited often holds the very line being typed (the
/// user is changing it); its occurrences do not vote, so they must not set the match length
/// either, or every level of backoff would sit above what the rest of the workspace shares
/// and the model would fall silent (a Neovim session editing a saved file found this).
fn longest_foreign_match(corpus: &Corpus, query: &[u8], own_file: Option<&Path>) -> (usize, Hits) {
    let (len, hits) = corpus.longest_suffix_match(query);
    // A length counts when an occurrence among those that would vote (the same sample, the
    // same skips as the voting below) is live and outside the own file. Occurrences of a
    // shorter tail include those of a longer one, so this holds up to some bound, found by
    // bisection (on a sample, nearly monotone: a miss only shortens the match, as backoff
    // would). Without an own file, any live occurrence will do ([`Corpus::positions`] yields
    // live ones only), so an index with no dead text answers as it did before there was any.
    let votes_elsewhere = |level: usize, hits: &Hits| {
        corpus
            .positions(hits, MAX_VOTERS)
            .any(|start| match own_file {
                None => true,
                Some(own) => {
                    let ends_file = corpus.byte(start + level).is_none_or(|b| b == 0);
                    !ends_file && corpus.file_at(start).is_none_or(|f| f != own)
                }
            })
    };
    if len == 0 || votes_elsewhere(len, &hits) {
        return (len, hits);
    }
    let (mut found, mut missing) = (0, len);
    while missing - found > 1 {
        let mid = found + (missing - found) / 2;
        if votes_elsewhere(mid, &corpus.find(&query[query.len() - mid..])) {
            found = mid;
        } else {
            missing = mid;
        }
    }
    match found {
        0 => (0, Hits::default()),
        n => (n, corpus.find(&query[query.len() - n..])),
    }
}

/// How likely a proposal made on `e` is to be exactly the rest of the line: a logistic
/// function of five figures of the evidence, so that "0.8" means right about 8 times in 10 and
/// the pool can weigh it against a model's confidence.
///
/// Fitted by `offline/fit_confidence.py` (logistic regression, plain Python) on the rows of
/// `reaper-bench eval-offline --seed 2 --cuts-per-file 40 --features-csv FILE` for nine crates
/// (tokio, rustls, quinn-proto, hyper, regex-automata, clap_builder, syn, rkyv, futures-util;
/// 7,700 answers), and checked on eight it never saw (serde, h2, tracing-subscriber, reqwest,
/// ring, regex-syntax, bytes, mio), where each confidence decile was exactly right about as
/// often as it says. Refitted once the buffer's lines below the cursor became evidence: the
/// weights moved by less than 0.2, so they were kept. The reports use seed 1: other files,
/// other cuts. What the weights say:
/// - a whole continuation that won a majority has e^5.45 ≈ 230 times the odds of a start that
///   the votes merely share, which is a correct start more often than not but rarely the whole
///   rest of the line (the votes disagreed about how it ends): such a start usually gets under
///   0.1;
/// - the share of the votes behind it, from ½ to 1, multiplies the odds by e^1.9 ≈ 6.6;
/// - each doubling of the match length multiplies them by 2.1, of the votes' weight by 1.75;
/// - each doubling of the proposal's length multiplies them by 0.6: more characters, more ways
///   to be wrong.
///
/// The former formula (share × √(match / 48)) gave a shared start the same confidence as a
/// whole line, so the answers at 0.5 or more were exactly right only 50–65% of the time.
/// Other figures of [`Evidence`] (the buffer's own vote, the number of distinct continuations,
/// whether the match reaches back past the line start, whether the cursor is inside a word)
/// lowered the held-out crates' log-loss by under 2% together, and are left out.
fn confidence(e: &Evidence) -> f32 {
    let share = if e.total > 0.0 {
        e.weight / e.total
    } else {
        0.0
    };
    let z = -11.92
        + 5.45 * f64::from(u8::from(e.majority))
        + 3.78 * share
        + 1.09 * (e.matched.max(1) as f64).ln()
        + 0.81 * e.total.ln_1p()
        - 0.73 * (e.proposed as f64).ln_1p();
    (1.0 / (1.0 + (-z).exp())).clamp(0.0, 1.0) as f32
}

/// Length of the longest suffix of `query` that occurs in `haystack`.
fn longest_local_match(haystack: &[u8], query: &[u8]) -> usize {
    let (mut lo, mut hi) = (0usize, query.len().min(haystack.len()));
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if memmem::find(haystack, &query[query.len() - mid..]).is_some() {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

/// What followed a match: up to the end of its line.
fn continuation(text: &[u8], from: usize) -> &[u8] {
    let rest = &text[from.min(text.len())..];
    let rest = &rest[..rest.len().min(MAX_COMPLETION)];
    let end = memchr::memchr2(b'\n', 0, rest).unwrap_or(rest.len());
    &rest[..end]
}

/// The continuation most votes agree on; failing a majority, the longest start that a majority
/// shares. Returns it with the weight behind it, and whether it is a whole continuation.
fn agreed_continuation<'a>(
    votes: &HashMap<&'a [u8], f64>,
    total: f64,
) -> Option<(&'a [u8], f64, bool)> {
    let (&best, &weight) = votes
        .iter()
        .max_by(|a, b| a.1.total_cmp(b.1).then_with(|| b.0.cmp(a.0)))?;
    if weight >= MIN_SHARE * total {
        return Some((best, weight, true));
    }
    // Longest prefix of the best continuation that enough votes share, cut at a token edge.
    for len in (1..=best.len()).rev() {
        if len < best.len() && is_word(best[len - 1]) && is_word(best[len]) {
            continue;
        }
        let prefix = &best[..len];
        let shared: f64 = votes
            .iter()
            .filter(|(c, _)| c.starts_with(prefix))
            .map(|(_, w)| w)
            .sum();
        if shared >= MIN_SHARE * total {
            return Some((prefix, shared, false));
        }
    }
    None
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Drops the end of `completion` that the text after the cursor already has (an auto-closed
/// bracket, the rest of a line being edited): the daemon never inserts what is already there.
fn trim_against_suffix<'a>(completion: &'a [u8], suffix: &str) -> &'a [u8] {
    let line = suffix
        .split('\n')
        .next()
        .unwrap_or("")
        .trim_end()
        .as_bytes();
    if line.is_empty() {
        return completion;
    }
    for k in (1..=completion.len().min(line.len())).rev() {
        if completion.ends_with(&line[..k]) {
            return &completion[..completion.len() - k];
        }
    }
    completion
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::CorpusBuilder;
    use std::path::PathBuf;

    fn corpus(files: &[&str]) -> Corpus {
        let mut b = CorpusBuilder::default();
        for (i, f) in files.iter().enumerate() {
            b.add(PathBuf::from(format!("f{i}.rs")), f.as_bytes());
        }
        b.build()
    }

    #[test]
    fn repeats_a_pattern_from_the_workspace() {
        let c = corpus(&["fn a() {\n    let config = Config::from_env().expect(\"config\");\n}\n"]);
        let p = predict(
            Some(&c),
            "fn b() {\n    let config = Config::from_",
            "\n}\n",
            None,
        )
        .unwrap();
        assert_eq!(p.text, "env().expect(\"config\");");
        assert!(p.confidence > 0.0 && p.confidence <= 1.0);
    }

    #[test]
    fn repeats_a_pattern_from_the_buffer_itself() {
        let prefix = "x.push(item_one);\ny.push(item_two);\nx.push(item_";
        let p = predict(None, prefix, "", None).unwrap();
        assert_eq!(p.text, "one);");
    }

    #[test]
    fn never_inserts_what_follows_the_cursor() {
        let c = corpus(&["call(alpha, beta);\n"]);
        let p = predict(Some(&c), "fn main() {\n    call(alpha, ", ");\n}", None).unwrap();
        assert_eq!(p.text, "beta");
        assert!(predict(Some(&c), "fn main() {\n    call(alpha, ", "beta);", None).is_none());
    }

    #[test]
    fn stays_silent_without_evidence_or_when_votes_scatter() {
        let c = corpus(&["let a = 1;\n"]);
        assert!(predict(Some(&c), "something entirely different ", "", None).is_none());
        let scattered = corpus(&["value = one;\nvalue = two;\nvalue = three;\nvalue = four;\n"]);
        assert!(predict(Some(&scattered), "\nvalue = ", "", None).is_none());
    }

    #[test]
    fn a_shared_start_is_proposed_when_the_ends_differ() {
        let c = corpus(&[
            "self.state.lock().unwrap().insert(a);\n",
            "self.state.lock().unwrap().remove(b);\n",
            "self.state.lock().unwrap().clear();\n",
        ]);
        let p = predict(Some(&c), "fn f(&self) {\n    self.state.", "", None).unwrap();
        assert_eq!(p.text, "lock().unwrap().");
    }

    #[test]
    fn more_agreement_means_more_confidence() {
        let one = corpus(&["let handle = spawn_worker(config);\n"]);
        let many = corpus(&["let handle = spawn_worker(config);\n"; 6]);
        let q = "fn x() {\n    let handle = spawn_";
        let low = predict(Some(&one), q, "", None).unwrap().confidence;
        let high = predict(Some(&many), q, "", None).unwrap().confidence;
        assert!(high > low, "{high} > {low}");
    }

    #[test]
    fn a_whole_line_is_surer_than_a_start_the_votes_share() {
        let body = "    let settings = Settings::from_file(\"app.toml\").expect(\"settings file is readable\");\n";
        let c = corpus(&[
            &format!("pub fn load() {{\n{body}}}\n"),
            &format!("pub fn reload() {{\n{body}    settings.apply();\n}}\n"),
        ]);
        // The case `server/tests/completion.rs` expects more than 0.3 confidence for.
        let q = "pub fn again() {\n    let settings = Settings::from_";
        let (whole, e) = predict_explained(Some(&c), q, "\n}\n", None).unwrap();
        assert!(e.majority);
        assert!(whole.confidence > 0.3, "{whole:?} {e:?}");
        let c = corpus(&[
            "self.state.lock().unwrap().insert(a);\n",
            "self.state.lock().unwrap().remove(b);\n",
            "self.state.lock().unwrap().clear();\n",
        ]);
        let (start, e) =
            predict_explained(Some(&c), "fn f(&self) {\n    self.state.", "", None).unwrap();
        assert!(!e.majority);
        assert!(start.confidence < 0.1, "{start:?} {e:?}");
    }

    #[test]
    fn the_lines_below_the_cursor_are_evidence_but_not_the_rest_of_its_line() {
        // A builder chain being written above its twin: nothing before the cursor, nothing in
        // the index, only the text below says what follows.
        let prefix = "fn build() -> Config {\n    Config::builder()\n        .retry_limit(";
        let suffix = "\n        .build()\n}\n\nfn other() -> Config {\n    Config::builder()\n        .retry_limit(3)\n        .build()\n}\n";
        let p = predict(None, prefix, suffix, None).unwrap();
        assert_eq!(p.text, "3)");
        // The rest of the cursor's own line is not a vote for itself.
        assert_eq!(
            predict(None, "let total = compute_", "total_sum(x);\n", None),
            None
        );
    }

    #[test]
    fn the_saved_copy_of_the_file_being_edited_does_not_silence_the_rest() {
        // f0.rs is the file being edited; its saved copy holds the line being retyped, with a
        // longer context than any other file shares.
        let c = corpus(&[
            "fn next() {\n    /* é */ let retry = RetryPolicy::new(\n}\n",
            "fn a() {\n    let retry = RetryPolicy::new(3, Duration::from_millis(100));\n}\n",
            "fn b() {\n    let retry = RetryPolicy::new(3, Duration::from_millis(100));\n}\n",
        ]);
        let prefix = "fn next() {\n    /* é */ let retry = RetryPolicy::new(";
        let own = Path::new("f0.rs");
        let (p, e) = predict_explained(Some(&c), prefix, "\n}\n", Some(own)).unwrap();
        assert_eq!(p.text, "3, Duration::from_millis(100));");
        assert_eq!(e.corpus_len, " let retry = RetryPolicy::new(".len());
        // Without knowing which file is edited, the saved copy is evidence like any other.
        assert_eq!(
            longest_foreign_match(&c, prefix.as_bytes(), None).0,
            prefix.len()
        );
    }

    #[test]
    fn odd_input_does_not_panic() {
        let c = corpus(&["ünïcödé → arrows\n"]);
        for prefix in ["", "\n", "é", "ünïcödé → ", "\0\0\0"] {
            let _ = predict(Some(&c), prefix, "→", None);
        }
    }
}
