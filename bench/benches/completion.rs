//! Criterion suites for the completion path: offline prediction, the repository context a
//! model is shown (related snippets from the index), and cache lookup.
//!
//! The corpus is this repository's own sources (always present), cut at fixed points.

use std::hint::black_box;
use std::num::NonZeroUsize;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use std::collections::HashSet;

use reaper_offline::workspace::{build_corpus, IndexLimits};
use reaper_offline::{predict, Policy};
use reaper_server::services::completion::cache::{Cached, CompletionCache, KeyParts};

const LIMITS: IndexLimits = IndexLimits {
    max_file_bytes: 1 << 20,
    max_workspace_bytes: 1 << 28,
};

fn workspace() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Prefixes cut in the middle of lines of a file of this repository.
fn prefixes() -> Vec<String> {
    let text = std::fs::read_to_string(workspace().join("core/src/rpc/server.rs")).unwrap();
    let mut cuts = Vec::new();
    let mut at = 0;
    for line in text.lines().filter(|l| l.trim().len() > 20).step_by(17) {
        let start = text[at..].find(line).map(|i| at + i).unwrap_or(at);
        let cut = start + line.len() / 2;
        if text.is_char_boundary(cut) {
            cuts.push(text[cut.saturating_sub(2048)..cut].to_owned());
        }
        at = start;
    }
    cuts
}

fn bench_predict(c: &mut Criterion) {
    let (corpus, files, bytes) = build_corpus(workspace(), LIMITS);
    let prefixes = prefixes();
    eprintln!(
        "corpus: {files} files, {bytes} bytes; {} cut points",
        prefixes.len()
    );
    let mut i = 0;
    c.bench_function("offline_predict", |b| {
        b.iter(|| {
            i = (i + 1) % prefixes.len();
            black_box(predict(Some(&corpus), &prefixes[i], "\n}\n", None))
        })
    });
    c.bench_function("index_build_repository", |b| {
        b.iter(|| black_box(build_corpus(workspace(), LIMITS).2))
    });
    // The same text in 8 segments, as a workspace of 8 × 32 MiB would be: what a query pays
    // for segments.
    let split = corpus.resplit(Policy {
        segment_bytes: bytes / 8 + 1,
        fresh_bytes: 0,
    });
    eprintln!("split into {} segments", split.segment_count());
    c.bench_function("offline_predict_8_segments", |b| {
        b.iter(|| {
            i = (i + 1) % prefixes.len();
            black_box(predict(Some(&split), &prefixes[i], "\n}\n", None))
        })
    });
    // An edit: one file changed, against the rebuild it replaces (index_build_repository).
    let edited = workspace().join("core/src/rpc/server.rs");
    let text = std::fs::read(&edited).unwrap();
    let removed = HashSet::from([edited.clone()]);
    c.bench_function("index_update_one_file", |b| {
        b.iter(|| {
            let mut added = corpus.builder();
            added.add(edited.clone(), &text);
            black_box(corpus.updated(&removed, added).1)
        })
    });
}

/// Finding 2 KiB of related snippets for a cursor: the work the daemon adds to every
/// completion a remote model answers. On this repository, and on tokio's 4 MB when the cargo
/// registry has it.
fn bench_related(c: &mut Criterion) {
    let prefixes = prefixes();
    let own = workspace().join("core/src/rpc/server.rs");
    let mut corpora = vec![("repository", build_corpus(workspace(), LIMITS).0)];
    if let Some(tokio) = registry_tokio() {
        corpora.push(("tokio", build_corpus(&tokio, LIMITS).0));
    }
    for (name, corpus) in &corpora {
        let mut i = 0;
        c.bench_function(&format!("related_snippets_2k_{name}"), |b| {
            b.iter(|| {
                i = (i + 1) % prefixes.len();
                black_box(reaper_offline::related::related(
                    corpus,
                    &prefixes[i],
                    "\n}\n",
                    Some(&own),
                    2048,
                ))
            })
        });
    }
}

/// The newest tokio in the local cargo registry.
fn registry_tokio() -> Option<std::path::PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))?;
    let mut found: Vec<_> = std::fs::read_dir(home.join("registry/src"))
        .ok()?
        .filter_map(Result::ok)
        .flat_map(|index| std::fs::read_dir(index.path()).into_iter().flatten())
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|f| f.to_str()).is_some_and(|f| {
                f.strip_prefix("tokio-")
                    .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()))
            })
        })
        .collect();
    found.sort();
    found.pop().map(|p| p.join("src"))
}

fn bench_cache(c: &mut Criterion) {
    let mut cache = CompletionCache::new(
        NonZeroUsize::new(10_000).unwrap(),
        Duration::from_secs(3600),
    );
    let now = Instant::now();
    let prefixes = prefixes();
    for p in &prefixes {
        let key = KeyParts::new("rust", "/repo/src/lib.rs", p, "\n}\n", 512, 128);
        let value = Cached {
            completion: "x".repeat(40),
            confidence: 0.5,
            provider: "offline".into(),
        };
        cache.insert(key.to_owned_key(), value, now);
    }
    let mut i = 0;
    c.bench_function("cache_lookup_hit", |b| {
        b.iter(|| {
            i = (i + 1) % prefixes.len();
            let key = KeyParts::new("rust", "/repo/src/lib.rs", &prefixes[i], "\n}\n", 512, 128);
            black_box(cache.get(&key, now).is_some())
        })
    });
    c.bench_function("cache_lookup_miss", |b| {
        b.iter(|| {
            i = (i + 1) % prefixes.len();
            let key = KeyParts::new(
                "rust",
                "/repo/src/other.rs",
                &prefixes[i],
                "\n}\n",
                512,
                128,
            );
            black_box(cache.get(&key, now).is_some())
        })
    });
}

criterion_group!(benches, bench_predict, bench_related, bench_cache);
criterion_main!(benches);
