//! Snippets of other files related to the code around the cursor: the repository context a
//! model is shown with a completion.
//!
//! The identifiers around the cursor are looked up in the workspace's suffix array (the same
//! index the offline model predicts from, so every editor connected to the daemon shares it).
//! Rare identifiers say the most about what the user is working with — a type defined in
//! another file, the function being called — so each is weighted by how rare it is, and the
//! places where the rarest occur become candidate windows of a few lines. A window scores the
//! weights of the distinct identifiers it shares with the cursor's surroundings; the best
//! windows, of files other than the one being edited, fill the byte budget. It costs a few
//! dozen binary searches and a scan of a few kilobytes: well under a millisecond on 100,000
//! lines (`docs/design.md`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use reaper_core::text::{head, tail};

use crate::corpus::Corpus;

/// Bytes before the cursor whose identifiers make the query.
const QUERY_BEFORE: usize = 1500;
/// Bytes after the cursor whose identifiers make the query.
const QUERY_AFTER: usize = 300;
/// Distinct identifiers looked up, at most (the nearest the cursor first).
const MAX_IDENTIFIERS: usize = 32;
/// Identifiers whose occurrences become candidate windows (the rarest).
const MAX_ANCHORS: usize = 10;
/// Occurrences of one anchor that become windows, at most.
const WINDOWS_PER_ANCHOR: usize = 6;
/// An identifier that occurs more often than this says nothing about this place.
const MAX_OCCURRENCES: usize = 400;
/// Lines of a window before its anchor's line, and after.
const LINES_BEFORE: usize = 2;
const LINES_AFTER: usize = 8;
/// Longest window, in bytes.
const MAX_WINDOW: usize = 640;
/// Distinct shared identifiers a window needs to be worth showing.
const MIN_SHARED: usize = 2;

/// Identifier weights, hashed with FNV-1a: a window's score is a hash lookup per word, and
/// SipHash (the default) cost a quarter of the whole search (measured with `perf`).
type Weights<'a> = HashMap<&'a str, f32, Fnv>;

/// FNV-1a: fast for the short keys identifiers are, and nothing here is adversarial (the
/// keys come from the user's own code and are looked up, never grown without bound).
#[derive(Clone, Copy, Default)]
struct Fnv;

impl std::hash::BuildHasher for Fnv {
    type Hasher = FnvHasher;
    fn build_hasher(&self) -> FnvHasher {
        FnvHasher(0xcbf2_9ce4_8422_2325)
    }
}

struct FnvHasher(u64);

impl std::hash::Hasher for FnvHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A piece of another file.
#[derive(Debug, Clone, PartialEq)]
pub struct Snippet {
    /// The file it comes from.
    pub path: PathBuf,
    /// Whole lines of it.
    pub text: String,
    /// How related it is (the summed weights of the identifiers it shares with the cursor's
    /// surroundings); higher is more.
    pub score: f32,
}

/// Up to `budget` bytes of snippets from `corpus` most related to the text around the cursor,
/// best first, none from `own_file`.
pub fn related(
    corpus: &Corpus,
    prefix: &str,
    suffix: &str,
    own_file: Option<&Path>,
    budget: usize,
) -> Vec<Snippet> {
    if budget == 0 {
        return Vec::new();
    }
    let weights = identifier_weights(
        corpus,
        tail(prefix, QUERY_BEFORE),
        head(suffix, QUERY_AFTER),
    );
    if weights.len() < MIN_SHARED {
        return Vec::new();
    }
    let mut anchors: Vec<(&str, f32)> = weights.iter().map(|(&w, &s)| (w, s)).collect();
    anchors.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    anchors.truncate(MAX_ANCHORS);

    let mut seen: HashSet<usize> = HashSet::new();
    let mut candidates: Vec<(std::ops::Range<usize>, f32)> = Vec::new();
    for (anchor, _) in anchors {
        let hits = corpus.find(anchor.as_bytes());
        for pos in corpus.positions(&hits, WINDOWS_PER_ANCHOR) {
            let Some((file, bounds)) = corpus.file_range_at(pos) else {
                continue;
            };
            if own_file.is_some_and(|own| file == own) {
                continue;
            }
            // Windows are found in the segment's text (a file never spans two) and kept in
            // global positions.
            let Some((text, base)) = corpus.segment_text_at(pos) else {
                continue;
            };
            let local = window_around(text, bounds.start - base..bounds.end - base, pos - base);
            let window = local.start + base..local.end + base;
            if !seen.insert(window.start) {
                continue;
            }
            let Ok(body) = std::str::from_utf8(corpus.slice(window.clone())) else {
                continue;
            };
            let (score, shared) = score(body, &weights);
            if shared >= MIN_SHARED {
                candidates.push((window, score));
            }
        }
    }
    candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.start.cmp(&b.0.start)));

    let mut chosen: Vec<(std::ops::Range<usize>, f32)> = Vec::new();
    let mut used = 0;
    for (window, score) in candidates {
        if chosen
            .iter()
            .any(|(c, _)| c.start < window.end && window.start < c.end)
        {
            continue;
        }
        if used + window.len() > budget {
            continue;
        }
        // Code the user already has before the cursor is no news to the model.
        let body = String::from_utf8_lossy(corpus.slice(window.clone()));
        if prefix.contains(body.trim()) {
            continue;
        }
        used += window.len();
        chosen.push((window, score));
    }
    chosen
        .into_iter()
        .filter_map(|(window, score)| {
            Some(Snippet {
                path: corpus.file_at(window.start)?.clone(),
                text: String::from_utf8_lossy(corpus.slice(window)).into_owned(),
                score,
            })
        })
        .collect()
}

/// The identifiers around the cursor that occur elsewhere in the workspace, each with its
/// weight: `ln(1 + MAX_OCCURRENCES / occurrences)`, so the rarest weigh most and the common
/// ones (past [`MAX_OCCURRENCES`]) are left out.
fn identifier_weights<'a>(corpus: &Corpus, before: &'a str, after: &'a str) -> Weights<'a> {
    let mut nearest_first: Vec<&str> = identifiers(before).collect();
    nearest_first.reverse();
    nearest_first.extend(identifiers(after));
    let mut weights = Weights::default();
    let mut looked_up = HashSet::new();
    for word in nearest_first {
        if looked_up.len() >= MAX_IDENTIFIERS {
            break;
        }
        if !looked_up.insert(word) {
            continue;
        }
        let occurrences = corpus.find(word.as_bytes()).len();
        if occurrences == 0 || occurrences > MAX_OCCURRENCES {
            continue;
        }
        let weight = (1.0 + MAX_OCCURRENCES as f32 / occurrences as f32).ln();
        weights.insert(word, weight);
    }
    weights
}

/// The words of `text` worth looking up: identifiers of three or more characters that are not
/// keywords or primitive types of the common languages.
fn identifiers(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.len() >= 3 && !w.starts_with(|c: char| c.is_ascii_digit()))
        .filter(|w| !COMMON.contains(w))
}

/// Words every file of a language has: never evidence that two places are related.
const COMMON: &[&str] = &[
    "let",
    "mut",
    "pub",
    "use",
    "impl",
    "self",
    "Self",
    "struct",
    "enum",
    "match",
    "return",
    "const",
    "static",
    "async",
    "await",
    "where",
    "for",
    "while",
    "loop",
    "else",
    "true",
    "false",
    "None",
    "Some",
    "Err",
    "trait",
    "crate",
    "super",
    "mod",
    "dyn",
    "ref",
    "move",
    "break",
    "continue",
    "type",
    "unsafe",
    "extern",
    "def",
    "class",
    "import",
    "from",
    "function",
    "var",
    "this",
    "new",
    "int",
    "void",
    "char",
    "long",
    "double",
    "float",
    "string",
    "String",
    "str",
    "usize",
    "isize",
    "u32",
    "u64",
    "u16",
    "i32",
    "i64",
    "f32",
    "f64",
    "bool",
    "Vec",
    "Option",
    "Result",
    "null",
    "undefined",
    "package",
    "func",
    "not",
    "and",
    "with",
    "pass",
    "elif",
    "lambda",
    "yield",
    "try",
    "catch",
    "throw",
    "throws",
    "public",
    "private",
    "protected",
    "final",
    "interface",
    "export",
    "default",
    "case",
    "switch",
    "the",
    "get",
    "set",
    "len",
    "clone",
    "into",
    "unwrap",
    "Box",
    "Arc",
    "derive",
    "Debug",
    "Clone",
    "test",
    "assert",
    "assert_eq",
];

/// A few whole lines around `pos`, within its file (`file`, a range of `text`), at most
/// [`MAX_WINDOW`] bytes.
fn window_around(text: &[u8], file: std::ops::Range<usize>, pos: usize) -> std::ops::Range<usize> {
    let (file_start, file_end) = (file.start, file.end);
    let mut start =
        memchr::memrchr(b'\n', &text[file_start..pos]).map_or(file_start, |i| file_start + i + 1);
    for _ in 0..LINES_BEFORE {
        if start == file_start {
            break;
        }
        start = memchr::memrchr(b'\n', &text[file_start..start - 1])
            .map_or(file_start, |i| file_start + i + 1);
    }
    let mut end = pos;
    for _ in 0..=LINES_AFTER {
        match memchr::memchr(b'\n', &text[end..file_end]) {
            Some(i) if end + i + 1 - start <= MAX_WINDOW => end += i + 1,
            Some(_) => break,
            None => {
                if file_end - start <= MAX_WINDOW {
                    end = file_end;
                }
                break;
            }
        }
    }
    // A single line longer than the window: keep the window's worth of it.
    if end <= pos {
        end = (start + MAX_WINDOW).min(file_end);
        while end > start && std::str::from_utf8(&text[start..end]).is_err() {
            end -= 1;
        }
    }
    start..end
}

/// The summed weights of the distinct identifiers `body` shares with the query, and how many.
fn score(body: &str, weights: &Weights<'_>) -> (f32, usize) {
    let mut shared: HashSet<&str, Fnv> = HashSet::default();
    let mut total = 0.0;
    // Every word is looked up directly: the weights hold no keyword, so no filtering is needed.
    for word in body
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.len() >= 3)
    {
        if let Some(&w) = weights.get(word) {
            if shared.insert(word) {
                total += w;
            }
        }
    }
    (total, shared.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CorpusBuilder;

    fn corpus(files: &[(&str, &str)]) -> Corpus {
        let mut builder = CorpusBuilder::default();
        for (path, text) in files {
            builder.add(PathBuf::from(path), text.as_bytes());
        }
        builder.build()
    }

    const RETRY: &str = "//! Retrying.\n\npub struct RetryPolicy {\n    pub max_attempts: u32,\n    pub backoff_ms: u64,\n}\n\nimpl RetryPolicy {\n    pub fn next_delay(&self, attempt: u32) -> u64 {\n        self.backoff_ms << attempt.min(10)\n    }\n}\n";
    const UNRELATED: &str = "fn render_table(rows: &[Row]) -> String {\n    rows.iter().map(|r| r.to_string()).collect()\n}\n";

    #[test]
    fn the_definition_of_what_the_cursor_uses_is_found() {
        let corpus = corpus(&[
            ("/ws/src/retry.rs", RETRY),
            ("/ws/src/table.rs", UNRELATED),
            (
                "/ws/src/client.rs",
                "fn send(policy: &RetryPolicy) {\n    let delay = policy.next_delay(1);\n}\n",
            ),
        ]);
        let prefix = "use crate::retry::RetryPolicy;\n\nfn call(policy: &RetryPolicy, attempt: u32) {\n    let wait = policy.next_delay(attempt);\n    if attempt < policy.";
        let snippets = related(
            &corpus,
            prefix,
            "\n}\n",
            Some(Path::new("/ws/src/client.rs")),
            2048,
        );
        assert!(!snippets.is_empty());
        assert_eq!(snippets[0].path, PathBuf::from("/ws/src/retry.rs"));
        assert!(
            snippets[0].text.contains("max_attempts"),
            "{:?}",
            snippets[0]
        );
        assert!(
            snippets
                .iter()
                .all(|s| s.path != Path::new("/ws/src/client.rs")),
            "never the file being edited"
        );
        assert!(snippets
            .iter()
            .all(|s| s.path != Path::new("/ws/src/table.rs")));
    }

    #[test]
    fn the_budget_holds_and_nothing_is_found_for_unknown_code() {
        let corpus = corpus(&[("/ws/src/retry.rs", RETRY)]);
        let prefix = "fn f(policy: &RetryPolicy) { policy.next_delay(2); policy.";
        let all: usize = related(&corpus, prefix, "", None, 64)
            .iter()
            .map(|s| s.text.len())
            .sum();
        assert!(all <= 64);
        assert!(related(&corpus, prefix, "", None, 0).is_empty());
        assert!(related(&corpus, "fn totally_unknown(words_here) {", "", None, 2048).is_empty());
    }

    #[test]
    fn windows_stay_inside_their_file_and_on_character_edges() {
        let long = format!("{}é{}", "x".repeat(700), "RetryPolicy");
        let corpus = corpus(&[("/a", "RetryPolicy one\ntwo"), ("/b", &long)]);
        let (text, _) = corpus.segment_text_at(0).unwrap();
        for pos in [0, 5, 20, 800] {
            let pos = pos.min(text.len() - 2);
            let (_, file) = corpus.file_range_at(pos).unwrap();
            let window = window_around(text, file, pos);
            let slice = &text[window];
            assert!(!slice.contains(&0), "no window crosses files");
            assert!(std::str::from_utf8(slice).is_ok());
            assert!(slice.len() <= MAX_WINDOW);
        }
    }
}
