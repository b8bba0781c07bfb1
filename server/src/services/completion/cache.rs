//! The completion cache, and "typing through" a suggestion.
//!
//! Both are read on the event loop for every completion, before any thread hop, so a lookup
//! hashes the key parts straight from the request (borrowed, possibly from the received
//! datagram) and compares them against the stored entry without allocating.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use lru::LruCache;
use reaper_core::rpc::ConnId;

use reaper_core::text::{head, tail};

/// What a completion request is looked up by.
#[derive(Debug, Clone, Copy)]
pub struct KeyParts<'a> {
    /// The request's language.
    pub language: &'a str,
    /// Its file path ("" for none).
    pub file: &'a str,
    /// The end of the prefix (key length from config).
    pub prefix_tail: &'a str,
    /// The start of the suffix.
    pub suffix_head: &'a str,
}

impl<'a> KeyParts<'a> {
    /// The key of a request, with the configured lengths.
    pub fn new(
        language: &'a str,
        file: &'a str,
        prefix: &'a str,
        suffix: &'a str,
        prefix_bytes: usize,
        suffix_bytes: usize,
    ) -> Self {
        KeyParts {
            language,
            file,
            prefix_tail: tail(prefix, prefix_bytes),
            suffix_head: head(suffix, suffix_bytes),
        }
    }

    fn hash(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.language, self.file, self.prefix_tail, self.suffix_head).hash(&mut h);
        h.finish()
    }

    fn owned(&self) -> OwnedKey {
        OwnedKey {
            language: self.language.into(),
            file: self.file.into(),
            prefix_tail: self.prefix_tail.into(),
            suffix_head: self.suffix_head.into(),
        }
    }
}

/// A key kept in an entry, to tell a hash collision from a hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedKey {
    language: Box<str>,
    file: Box<str>,
    prefix_tail: Box<str>,
    suffix_head: Box<str>,
}

impl OwnedKey {
    fn matches(&self, parts: &KeyParts<'_>) -> bool {
        *self.prefix_tail == *parts.prefix_tail
            && *self.suffix_head == *parts.suffix_head
            && *self.file == *parts.file
            && *self.language == *parts.language
    }
}

/// A completion as cached.
#[derive(Debug, Clone, PartialEq)]
pub struct Cached {
    /// The text.
    pub completion: String,
    /// Its confidence.
    pub confidence: f32,
    /// Who produced it.
    pub provider: String,
}

struct Entry {
    key: OwnedKey,
    value: Cached,
    expires: Instant,
}

/// Counters reported by `Health.check`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheCounters {
    /// Lookups answered from the cache (typing through included).
    pub hits: u64,
    /// Lookups that went to a provider.
    pub misses: u64,
    /// Entries dropped to make room.
    pub evictions: u64,
    /// Hits answered by typing through a previous suggestion.
    pub typed_through: u64,
}

/// An LRU map from request keys to completions, with a TTL.
pub struct CompletionCache {
    entries: LruCache<u64, Entry>,
    ttl: Duration,
    counters: CacheCounters,
}

impl std::fmt::Debug for CompletionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompletionCache")
            .field("entries", &self.entries.len())
            .finish()
    }
}

impl CompletionCache {
    /// A cache of at most `capacity` entries, each valid for `ttl`.
    pub fn new(capacity: NonZeroUsize, ttl: Duration) -> CompletionCache {
        CompletionCache {
            entries: LruCache::new(capacity),
            ttl,
            counters: CacheCounters::default(),
        }
    }

    /// Looks a request up. Counts a hit or a miss.
    pub fn get(&mut self, parts: &KeyParts<'_>, now: Instant) -> Option<&Cached> {
        let hash = parts.hash();
        let fresh = match self.entries.peek(&hash) {
            Some(e) if e.key.matches(parts) => e.expires > now,
            _ => {
                self.counters.misses += 1;
                return None;
            }
        };
        if !fresh {
            self.entries.pop(&hash);
            self.counters.misses += 1;
            return None;
        }
        self.counters.hits += 1;
        self.entries.get(&hash).map(|e| &e.value)
    }

    /// Stores a completion.
    pub fn insert(&mut self, key: OwnedKey, value: Cached, now: Instant) {
        let parts = KeyParts {
            language: &key.language,
            file: &key.file,
            prefix_tail: &key.prefix_tail,
            suffix_head: &key.suffix_head,
        };
        let hash = parts.hash();
        let evicted = self.entries.push(
            hash,
            Entry {
                key,
                value,
                expires: now + self.ttl,
            },
        );
        if evicted.is_some_and(|(h, _)| h != hash) {
            self.counters.evictions += 1;
        }
    }

    /// Counts a hit answered by typing through.
    pub fn count_typed_through(&mut self) {
        self.counters.hits += 1;
        self.counters.typed_through += 1;
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The counters.
    pub fn counters(&self) -> CacheCounters {
        self.counters
    }
}

impl KeyParts<'_> {
    /// The key, owned, for storing a provider's answer later.
    pub fn to_owned_key(&self) -> OwnedKey {
        self.owned()
    }
}

/// Bytes of the prefix remembered to recognise typing through.
const TYPED_TAIL: usize = 128;
/// Bytes of the suffix's first line that must match for typing through.
const SUFFIX_LINE: usize = 256;

/// What a suggestion was made for, as far as typing through is concerned.
#[derive(Debug, Clone)]
pub struct TypingContext {
    file: Box<str>,
    language: Box<str>,
    prefix_len: usize,
    prefix_tail: Box<str>,
    suffix_line: Box<str>,
}

/// A request's typing context, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct TypingRef<'a> {
    file: &'a str,
    language: &'a str,
    prefix: &'a str,
    suffix_line: &'a str,
}

impl<'a> TypingRef<'a> {
    /// The context of a request.
    pub fn new(file: &'a str, language: &'a str, prefix: &'a str, suffix: &'a str) -> Self {
        TypingRef {
            file,
            language,
            prefix,
            suffix_line: head(first_line(suffix), SUFFIX_LINE),
        }
    }

    /// Owned, to remember with a suggestion.
    pub fn to_owned(&self) -> TypingContext {
        TypingContext {
            file: self.file.into(),
            language: self.language.into(),
            prefix_len: self.prefix.len(),
            prefix_tail: tail(self.prefix, TYPED_TAIL).into(),
            suffix_line: self.suffix_line.into(),
        }
    }
}

fn first_line(s: &str) -> &str {
    s.split('\n').next().unwrap_or("")
}

/// Remembers the last suggestion on each connection, so that typing the characters it began
/// with is answered with the rest of it, without asking a provider again. One per connection:
/// typing happens in one file at a time, and the memory stays bounded.
#[derive(Debug, Default)]
pub struct TypingThrough {
    last: HashMap<ConnId, (TypingContext, Cached)>,
}

impl TypingThrough {
    /// Records what was suggested in `context`.
    pub fn remember(&mut self, conn: ConnId, context: TypingContext, suggestion: Cached) {
        if suggestion.completion.is_empty() {
            self.last.remove(&conn);
        } else {
            self.last.insert(conn, (context, suggestion));
        }
    }

    /// The rest of the last suggestion, if the request is the old one plus the start of it:
    /// same file, language and text after the cursor, and a prefix that is the old prefix
    /// followed by characters the suggestion began with.
    pub fn continue_with(&self, conn: ConnId, now: &TypingRef<'_>) -> Option<Cached> {
        let (then, suggestion) = self.last.get(&conn)?;
        if *then.file != *now.file
            || *then.language != *now.language
            || *then.suffix_line != *now.suffix_line
        {
            return None;
        }
        let typed = now.prefix.get(then.prefix_len..)?;
        let before = now.prefix.get(..then.prefix_len)?;
        if typed.is_empty() || !before.ends_with(&*then.prefix_tail) {
            return None;
        }
        let rest = suggestion.completion.strip_prefix(typed)?;
        if rest.is_empty() {
            return None;
        }
        Some(Cached {
            completion: rest.to_owned(),
            confidence: suggestion.confidence,
            provider: suggestion.provider.clone(),
        })
    }

    /// Forgets a closed connection's suggestion.
    pub fn forget_connection(&mut self, conn: ConnId) {
        self.last.remove(&conn);
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(text: &str) -> Cached {
        Cached {
            completion: text.into(),
            confidence: 0.7,
            provider: "offline".into(),
        }
    }

    #[test]
    fn hits_misses_ttl_and_eviction() {
        let mut cache =
            CompletionCache::new(NonZeroUsize::new(2).unwrap(), Duration::from_secs(10));
        let now = Instant::now();
        let a = KeyParts::new("rust", "/a.rs", "fn main() {", "}", 512, 128);
        let b = KeyParts::new("rust", "/b.rs", "fn main() {", "}", 512, 128);
        let c = KeyParts::new("rust", "/c.rs", "fn main() {", "}", 512, 128);
        assert!(cache.get(&a, now).is_none());
        cache.insert(a.to_owned_key(), cached("x"), now);
        assert_eq!(cache.get(&a, now).unwrap().completion, "x");
        assert!(cache.get(&b, now).is_none(), "another file is another key");
        cache.insert(b.to_owned_key(), cached("y"), now);
        cache.insert(c.to_owned_key(), cached("z"), now);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.counters().evictions, 1);
        assert!(
            cache.get(&c, now + Duration::from_secs(11)).is_none(),
            "expired"
        );
        let counters = cache.counters();
        assert_eq!((counters.hits, counters.misses), (1, 3));
    }

    #[test]
    fn only_the_key_lengths_of_prefix_and_suffix_matter() {
        let long = format!("{}fn tail_of_the_prefix()", "x".repeat(1000));
        let other = format!("{}fn tail_of_the_prefix()", "y".repeat(1000));
        let a = KeyParts::new("rust", "/a.rs", &long, "", 16, 0);
        let b = KeyParts::new("rust", "/a.rs", &other, "", 16, 0);
        assert_eq!(a.hash(), b.hash());
        assert!(a.to_owned_key().matches(&b));
    }

    #[test]
    fn typing_the_start_of_a_suggestion_gives_the_rest() {
        let conn = reaper_core::rpc::ConnId::for_tests(1);
        let mut typing = TypingThrough::default();
        let ctx = |file, prefix, suffix| TypingRef::new(file, "rust", prefix, suffix);
        typing.remember(
            conn,
            ctx("/a.rs", "let x = ", "\n").to_owned(),
            cached("compute(42);"),
        );
        let rest = |file, prefix, suffix| typing.continue_with(conn, &ctx(file, prefix, suffix));
        assert_eq!(
            rest("/a.rs", "let x = comp", "\n").unwrap().completion,
            "ute(42);"
        );
        assert!(
            rest("/a.rs", "let x = comX", "\n").is_none(),
            "typed something else"
        );
        assert!(
            rest("/a.rs", "let y = comp", "\n").is_none(),
            "the text before changed"
        );
        assert!(
            rest("/b.rs", "let x = comp", "\n").is_none(),
            "another file"
        );
        assert!(
            rest("/a.rs", "let x = comp", ");\n").is_none(),
            "the editor closed the bracket"
        );
        assert!(
            rest("/a.rs", "let x = compute(42);", "\n").is_none(),
            "nothing left"
        );
        typing.forget_connection(conn);
        assert!(typing.is_empty());
    }
}
