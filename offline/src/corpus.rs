//! The indexed text of a workspace: segments, each a suffix array over some of its files.
//!
//! Within a segment the files are concatenated into one buffer, separated by NUL bytes (which
//! never occur in source text or queries, so no match spans two files), and a suffix array
//! (libdivsufsort) answers "where does this string occur" with a binary search. Memory: the
//! text plus 4 bytes per byte of text for the array.
//!
//! A workspace's text is split into segments of at most [`Policy::segment_bytes`] so that a
//! change never sorts the whole workspace again (issue 13: appending to one file of a 200 MB
//! repository rebuilt all of it, one core pinned, old and new index side by side at 2.1 GB).
//! A [`Corpus`] is an immutable snapshot: [`Corpus::updated`] makes the next one, sharing every
//! segment the change did not touch. A changed file's old copy is marked dead where it lies
//! (its occurrences stop voting) and its new text goes into the small *fresh* segment, which is
//! sorted again with each change: work proportional to the files that changed, plus the fresh
//! segment (at most [`Policy::fresh_bytes`]). A segment whose text is half dead is compacted
//! from its live files alone, and small segments merge, so dead text stays under half of
//! memory, no rebuild ever holds more than one segment's worth beside the index, and the
//! number of segments (each a binary search per query) stays near the workspace's size over
//! [`Policy::segment_bytes`].
//!
//! Positions are global: segment `i`'s text starts where segment `i - 1`'s ends, as if all
//! were one buffer, so callers can do arithmetic on them within a file.

use std::collections::HashSet;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

/// Largest segment the 32-bit suffix array can address.
pub const MAX_CORPUS_BYTES: usize = i32::MAX as usize;

/// How text is split into segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// A segment holds up to this many bytes of text (one larger file gets one of its own).
    /// Sorting one takes about 0.1 s per MB here, and a query does one binary search per
    /// segment.
    pub segment_bytes: usize,
    /// The fresh segment, sorted again on every change, is sealed past this size.
    pub fresh_bytes: usize,
}

impl Default for Policy {
    /// 32 MiB segments (a 200 MB repository is 7; compacting one takes about 3 s and 160 MB),
    /// and a 1 MiB fresh segment (about 0.1 s to sort again).
    fn default() -> Policy {
        Policy {
            segment_bytes: 32 << 20,
            fresh_bytes: 1 << 20,
        }
    }
}

/// When a file was read: a file whose size and modification time are unchanged is not read
/// again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Its size in bytes.
    pub len: u64,
    /// Its modification time.
    pub modified: Option<SystemTime>,
}

/// One file of a segment.
#[derive(Debug, Clone)]
struct File {
    path: PathBuf,
    range: Range<usize>,
    stamp: Option<Stamp>,
}

/// Some files' text and its suffix array; never changed once built.
#[derive(Debug)]
struct Segment {
    text: Vec<u8>,
    suffixes: Vec<i32>,
    files: Vec<File>,
}

impl Segment {
    fn memory_bytes(&self) -> usize {
        self.text.capacity() + self.suffixes.capacity() * 4
    }

    /// The index in `files` of the file holding `pos` (a position in this segment).
    fn file_index(&self, pos: usize) -> Option<usize> {
        let i = self.files.partition_point(|f| f.range.end <= pos);
        self.files
            .get(i)
            .filter(|f| f.range.contains(&pos))
            .map(|_| i)
    }

    /// The range of the suffix array whose suffixes start with `pattern`.
    fn find(&self, pattern: &[u8]) -> Range<usize> {
        let text = &self.text;
        let head = |s: i32| {
            let s = s as usize;
            &text[s..(s + pattern.len()).min(text.len())]
        };
        let lo = self.suffixes.partition_point(|&s| head(s) < pattern);
        let hi = lo + self.suffixes[lo..].partition_point(|&s| head(s) <= pattern);
        lo..hi
    }

    /// The longest suffix of `query`, of at least `at_least` bytes, that occurs here: its
    /// length and suffix-array range; `None` when none that long does. Binary search on the
    /// length works because every suffix of an occurring string occurs too.
    fn longest_suffix_match(&self, query: &[u8], at_least: usize) -> Option<(usize, Range<usize>)> {
        let mut best = 0..0;
        if at_least > 0 {
            best = self.find(&query[query.len() - at_least..]);
            if best.is_empty() {
                return None;
            }
        }
        let (mut lo, mut hi) = (at_least, query.len());
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            let range = self.find(&query[query.len() - mid..]);
            if range.is_empty() {
                hi = mid - 1;
            } else {
                lo = mid;
                best = range;
            }
        }
        (lo > 0).then_some((lo, best))
    }
}

/// A segment as one snapshot sees it: where its text starts among all, and which of its files
/// are dead (changed or removed since it was built).
#[derive(Debug, Clone)]
struct Part {
    segment: Arc<Segment>,
    base: usize,
    dead: Vec<bool>,
    dead_bytes: usize,
    /// The fresh segment: sorted again, with what changes, on the next change.
    fresh: bool,
}

impl Part {
    fn live_bytes(&self) -> usize {
        self.segment.text.len() - self.dead_bytes
    }

    fn live_files(&self) -> impl Iterator<Item = &File> {
        self.segment
            .files
            .iter()
            .zip(&self.dead)
            .filter(|(_, &dead)| !dead)
            .map(|(f, _)| f)
    }
}

/// Indexed text of one workspace: an immutable snapshot.
#[derive(Debug, Clone, Default)]
pub struct Corpus {
    parts: Vec<Part>,
    policy: Policy,
}

/// Where a string occurs: a suffix-array range in each segment that holds it. Counts include
/// dead copies (a changed file's old text) until their segment is compacted, which happens
/// before they are half of it; [`Corpus::positions`] yields live ones only.
#[derive(Debug, Clone, Default)]
pub struct Hits(Vec<(usize, Range<usize>)>);

impl Hits {
    /// Occurrences, dead copies included.
    pub fn len(&self) -> usize {
        self.0.iter().map(|(_, r)| r.len()).sum()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|(_, r)| r.is_empty())
    }
}

/// What one update did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpdateStats {
    /// Bytes of text sorted into new segments (the work done).
    pub sorted_bytes: usize,
    /// Segments built (fresh, compacted, merged).
    pub segments_built: usize,
}

/// Builds segments one file at a time, sorting each as it fills, so building a workspace never
/// holds more than one unsorted segment beside the sorted ones.
#[derive(Debug, Default)]
pub struct CorpusBuilder {
    policy: Policy,
    done: Vec<Segment>,
    text: Vec<u8>,
    files: Vec<File>,
    total: usize,
    sorted: usize,
}

impl CorpusBuilder {
    /// A builder whose segments follow `policy`.
    pub fn with_policy(policy: Policy) -> CorpusBuilder {
        CorpusBuilder {
            policy,
            ..CorpusBuilder::default()
        }
    }

    /// Adds one file's text. NUL bytes in it become spaces (they separate files). `false`
    /// when it is too large for a segment.
    pub fn add(&mut self, path: PathBuf, text: &[u8]) -> bool {
        self.add_stamped(path, text, None)
    }

    /// [`CorpusBuilder::add`], remembering when the file was read.
    pub fn add_stamped(&mut self, path: PathBuf, text: &[u8], stamp: Option<Stamp>) -> bool {
        // libdivsufsort needs the length strictly below i32::MAX.
        if text.len() + 1 >= MAX_CORPUS_BYTES {
            return false;
        }
        let full = !self.text.is_empty()
            && self.text.len() + text.len() + 1 > self.policy.segment_bytes.min(MAX_CORPUS_BYTES);
        if full {
            self.seal();
        }
        let start = self.text.len();
        self.text
            .extend(text.iter().map(|&b| if b == 0 { b' ' } else { b }));
        self.files.push(File {
            path,
            range: start..self.text.len(),
            stamp,
        });
        self.text.push(0);
        self.total += text.len() + 1;
        true
    }

    /// Bytes added so far.
    pub fn len(&self) -> usize {
        self.total
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Sorts the text gathered so far into a segment (the expensive step).
    fn seal(&mut self) {
        if self.text.is_empty() {
            return;
        }
        let text = std::mem::take(&mut self.text);
        let mut suffixes = vec![0i32; text.len()];
        cdivsufsort::sort_in_place(&text, &mut suffixes);
        self.sorted += text.len();
        self.done.push(Segment {
            text,
            suffixes,
            files: std::mem::take(&mut self.files),
        });
    }

    /// The segments, sorted; the last is fresh when it is small enough to be.
    fn into_segments(mut self) -> (Vec<Segment>, usize) {
        self.seal();
        (self.done, self.sorted)
    }

    /// Sorts the suffixes and makes the corpus.
    pub fn build(self) -> Corpus {
        let policy = self.policy;
        let (segments, _) = self.into_segments();
        let mut corpus = Corpus {
            parts: Vec::new(),
            policy,
        };
        corpus.push_all(segments);
        corpus
    }
}

impl Corpus {
    /// A builder for the files of an update, splitting segments as this corpus does.
    pub fn builder(&self) -> CorpusBuilder {
        CorpusBuilder::with_policy(self.policy)
    }

    /// The same live files split by `policy` (to measure what segments cost a query).
    pub fn resplit(&self, policy: Policy) -> Corpus {
        let mut builder = CorpusBuilder::with_policy(policy);
        for part in &self.parts {
            for file in part.live_files() {
                let text = &part.segment.text[file.range.clone()];
                builder.add_stamped(file.path.clone(), text, file.stamp);
            }
        }
        builder.build()
    }

    /// Files indexed and alive.
    pub fn file_count(&self) -> usize {
        self.parts.iter().map(|p| p.live_files().count()).sum()
    }

    /// Bytes of live text indexed (each file's text and its separator).
    pub fn text_bytes(&self) -> usize {
        self.parts.iter().map(Part::live_bytes).sum()
    }

    /// Bytes of memory held: text and suffix arrays of every segment.
    pub fn memory_bytes(&self) -> usize {
        self.parts.iter().map(|p| p.segment.memory_bytes()).sum()
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.parts.len()
    }

    /// Whether `other` holds the very segment (not a copy) that holds position `pos` here:
    /// what a test asks to show that an update left a segment alone.
    pub fn shares_segment_at(&self, pos: usize, other: &Corpus) -> bool {
        self.part_at(pos).is_some_and(|(part, _)| {
            other
                .parts
                .iter()
                .any(|o| Arc::ptr_eq(&o.segment, &part.segment))
        })
    }

    /// The part holding global position `pos`, and `pos` within its segment.
    fn part_at(&self, pos: usize) -> Option<(&Part, usize)> {
        let i = self
            .parts
            .partition_point(|p| p.base + p.segment.text.len() <= pos);
        let part = self.parts.get(i)?;
        pos.checked_sub(part.base).map(|local| (part, local))
    }

    /// Whether the file holding `pos` is alive (not changed or removed since it was indexed).
    pub fn is_live(&self, pos: usize) -> bool {
        self.part_at(pos).is_some_and(|(part, local)| {
            part.segment
                .file_index(local)
                .is_some_and(|i| !part.dead[i])
        })
    }

    /// The byte at `pos`, `None` past the end.
    pub fn byte(&self, pos: usize) -> Option<u8> {
        let (part, local) = self.part_at(pos)?;
        part.segment.text.get(local).copied()
    }

    /// The text from `pos` to the end of its segment (its file's text ends at a NUL).
    pub fn rest(&self, pos: usize) -> &[u8] {
        self.part_at(pos)
            .map_or(&[][..], |(part, local)| &part.segment.text[local..])
    }

    /// The text of `range`, which must lie in one file; empty when it does not.
    pub fn slice(&self, range: Range<usize>) -> &[u8] {
        let Some((part, local)) = self.part_at(range.start) else {
            return &[];
        };
        let end = local + range.len();
        part.segment.text.get(local..end).unwrap_or(&[])
    }

    /// The file a position belongs to.
    pub fn file_at(&self, pos: usize) -> Option<&PathBuf> {
        self.file_range_at(pos).map(|(path, _)| path)
    }

    /// The file a position belongs to, with its range (global positions).
    pub fn file_range_at(&self, pos: usize) -> Option<(&PathBuf, Range<usize>)> {
        let (part, local) = self.part_at(pos)?;
        let file = &part.segment.files[part.segment.file_index(local)?];
        Some((
            &file.path,
            part.base + file.range.start..part.base + file.range.end,
        ))
    }

    /// The text of the segment holding `pos`, and the global position its first byte has.
    pub fn segment_text_at(&self, pos: usize) -> Option<(&[u8], usize)> {
        self.part_at(pos)
            .map(|(part, _)| (&part.segment.text[..], part.base))
    }

    /// Where `pattern` occurs.
    pub fn find(&self, pattern: &[u8]) -> Hits {
        Hits(
            self.parts
                .iter()
                .enumerate()
                .map(|(i, p)| (i, p.segment.find(pattern)))
                .filter(|(_, r)| !r.is_empty())
                .collect(),
        )
    }

    /// The longest suffix of `query` that occurs in the corpus, at most `query.len()` bytes:
    /// its length and where it occurs. Dead copies count (see [`Hits`]): callers that need a
    /// live occurrence look at [`Corpus::positions`].
    pub fn longest_suffix_match(&self, query: &[u8]) -> (usize, Hits) {
        // Each segment after the first is asked only whether it matches as long as the best
        // so far (one search, usually a miss), then for more: with 9 segments a prediction
        // took 397 µs asking each for its own longest, 285 µs this way (`docs/offline.md`).
        let (mut len, mut hits) = (0, Vec::new());
        for (i, part) in self.parts.iter().enumerate() {
            let Some((found, range)) = part.segment.longest_suffix_match(query, len) else {
                continue;
            };
            if found > len {
                len = found;
                hits.clear();
            }
            hits.push((i, range));
        }
        (len, Hits(hits))
    }

    /// Text positions of up to `cap` live occurrences among `hits`, spread evenly over them
    /// (one step over all segments, as if they were one suffix array).
    pub fn positions<'a>(&'a self, hits: &'a Hits, cap: usize) -> impl Iterator<Item = usize> + 'a {
        let step = hits.len().div_ceil(cap.max(1)).max(1);
        // Index, among all hits, of the current range's first: the stride continues across
        // segments, taking every multiple of `step`.
        let mut offset = 0usize;
        hits.0
            .iter()
            .flat_map(move |(i, range)| {
                let part = &self.parts[*i];
                let first = (offset.next_multiple_of(step) - offset).min(range.len());
                offset += range.len();
                part.segment.suffixes[range.start + first..range.end]
                    .iter()
                    .step_by(step)
                    .map(move |&s| (part, s as usize))
            })
            .filter(|(part, local)| {
                part.segment
                    .file_index(*local)
                    .is_some_and(|f| !part.dead[f])
            })
            .map(|(part, local)| part.base + local)
    }

    /// The next snapshot: the files in `removed` are dead (changed or gone), and `added`'s are
    /// indexed (a changed file is in both). Segments the change does not touch are shared,
    /// not copied.
    /// `added` should come from [`Corpus::builder`], to split as this corpus does.
    pub fn updated(
        &self,
        removed: &HashSet<PathBuf>,
        mut added: CorpusBuilder,
    ) -> (Corpus, UpdateStats) {
        let mut parts = self.parts.clone();
        for part in &mut parts {
            for (i, file) in part.segment.files.iter().enumerate() {
                if !part.dead[i] && removed.contains(&file.path) {
                    part.dead[i] = true;
                    part.dead_bytes += file.range.len() + 1;
                }
            }
        }
        // The fresh segment takes what changed, with its own live files, while it stays small;
        // past that it is sealed as it is and what changed starts a new one.
        let fresh = parts.iter().position(|p| p.fresh);
        if let Some(i) = fresh {
            if parts[i].live_bytes() + added.len() <= self.policy.fresh_bytes {
                let old = parts.remove(i);
                for file in old.live_files() {
                    let text = &old.segment.text[file.range.clone()];
                    added.add_stamped(file.path.clone(), text, file.stamp);
                }
            } else {
                parts[i].fresh = false;
            }
        }
        let mut stats = UpdateStats::default();
        let (segments, sorted) = if added.is_empty() {
            (Vec::new(), 0)
        } else {
            added.into_segments()
        };
        stats.sorted_bytes += sorted;
        stats.segments_built += segments.len();
        let mut next = Corpus {
            parts,
            policy: self.policy,
        };
        next.parts.retain(|p| p.live_bytes() > 0);
        next.compact(&mut stats);
        next.push_all(segments);
        next.rebase();
        (next, stats)
    }

    /// Appends built segments; the last is fresh when small enough.
    fn push_all(&mut self, segments: Vec<Segment>) {
        let count = segments.len();
        for (n, segment) in segments.into_iter().enumerate() {
            let fresh = n + 1 == count && segment.text.len() <= self.policy.fresh_bytes;
            self.parts.push(Part {
                dead: vec![false; segment.files.len()],
                dead_bytes: 0,
                segment: Arc::new(segment),
                base: 0,
                fresh,
            });
        }
        self.rebase();
    }

    /// Rebuilds half-dead segments from their live files, then merges the smallest while
    /// there are more segments than the text needs.
    fn compact(&mut self, stats: &mut UpdateStats) {
        let policy = self.policy;
        for part in &mut self.parts {
            if part.fresh || part.dead_bytes * 2 <= part.segment.text.len() {
                continue;
            }
            *part = rebuilt(&[&*part], policy, stats);
        }
        loop {
            let live: usize = self.parts.iter().map(Part::live_bytes).sum();
            let needed = live.div_ceil(policy.segment_bytes.max(1)) + 2;
            let mut sealed: Vec<usize> = (0..self.parts.len())
                .filter(|&i| !self.parts[i].fresh)
                .collect();
            if sealed.len() <= needed {
                return;
            }
            sealed.sort_by_key(|&i| self.parts[i].live_bytes());
            let (a, b) = (sealed[0], sealed[1]);
            let together = self.parts[a].live_bytes() + self.parts[b].live_bytes();
            if together > policy.segment_bytes {
                return;
            }
            let merged = rebuilt(&[&self.parts[a], &self.parts[b]], policy, stats);
            let (first, second) = (a.min(b), a.max(b));
            self.parts.remove(second);
            self.parts[first] = merged;
        }
    }

    /// Sets each part's base: where its text starts among all.
    fn rebase(&mut self) {
        let mut base = 0;
        for part in &mut self.parts {
            part.base = base;
            base += part.segment.text.len();
        }
    }
}

/// One segment holding the live files of `parts` (sorted from their text in memory, no file
/// read again).
fn rebuilt(parts: &[&Part], policy: Policy, stats: &mut UpdateStats) -> Part {
    let mut builder = CorpusBuilder::with_policy(Policy {
        segment_bytes: usize::MAX,
        ..policy
    });
    for part in parts {
        for file in part.live_files() {
            let text = &part.segment.text[file.range.clone()];
            builder.add_stamped(file.path.clone(), text, file.stamp);
        }
    }
    let (mut segments, sorted) = builder.into_segments();
    stats.sorted_bytes += sorted;
    stats.segments_built += 1;
    let segment = segments.pop().unwrap_or(Segment {
        text: Vec::new(),
        suffixes: Vec::new(),
        files: Vec::new(),
    });
    Part {
        dead: vec![false; segment.files.len()],
        dead_bytes: 0,
        segment: Arc::new(segment),
        base: 0,
        fresh: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(files: &[&str]) -> Corpus {
        let mut b = CorpusBuilder::default();
        for (i, f) in files.iter().enumerate() {
            b.add(PathBuf::from(format!("f{i}")), f.as_bytes());
        }
        b.build()
    }

    fn text_at(c: &Corpus, pos: usize) -> String {
        let rest = c.rest(pos);
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        String::from_utf8_lossy(&rest[..end]).into_owned()
    }

    #[test]
    fn finds_every_occurrence_and_the_longest_suffix() {
        let c = corpus(&["let x = foo(1);\nlet y = foo(2);\n", "foo(3)"]);
        assert_eq!(c.find(b"foo(").len(), 3);
        assert_eq!(c.find(b"bar").len(), 0);
        let (len, hits) = c.longest_suffix_match(b"zzz let y = foo(");
        assert_eq!(len, b"let y = foo(".len());
        assert_eq!(hits.len(), 1);
        let (len, hits) = c.longest_suffix_match(b"qqq");
        assert_eq!((len, hits.len()), (0, 0));
    }

    #[test]
    fn matches_never_span_files() {
        let c = corpus(&["abc", "def"]);
        assert_eq!(c.find(b"cde").len(), 0);
        assert_eq!(c.file_at(4).unwrap(), &PathBuf::from("f1"));
    }

    #[test]
    fn positions_are_capped_and_spread() {
        let c = corpus(&[&"ab".repeat(100)]);
        let hits = c.find(b"ab");
        assert_eq!(hits.len(), 100);
        assert_eq!(c.positions(&hits, 10).count(), 10);
    }

    const SMALL: Policy = Policy {
        segment_bytes: 64,
        fresh_bytes: 32,
    };

    fn small(files: &[(&str, &str)]) -> Corpus {
        let mut b = CorpusBuilder::with_policy(SMALL);
        for (path, text) in files {
            b.add(PathBuf::from(path), text.as_bytes());
        }
        b.build()
    }

    fn change(c: &Corpus, files: &[(&str, &str)]) -> (Corpus, UpdateStats) {
        let removed = files.iter().map(|(p, _)| PathBuf::from(p)).collect();
        let mut added = c.builder();
        for (path, text) in files {
            if !text.is_empty() {
                added.add(PathBuf::from(path), text.as_bytes());
            }
        }
        c.updated(&removed, added)
    }

    #[test]
    fn segments_behave_as_one_text() {
        let a = format!("{} shared_marker one\n", "a".repeat(40));
        let b = format!("{} shared_marker two\n", "b".repeat(40));
        let c = small(&[("a", &a), ("b", &b), ("c", "  shared_marker three\n")]);
        assert!(c.segment_count() >= 2, "{} segments", c.segment_count());
        let hits = c.find(b"shared_marker ");
        assert_eq!(hits.len(), 3);
        let mut found: Vec<String> = c
            .positions(&hits, 10)
            .map(|p| text_at(&c, p + b"shared_marker ".len()))
            .collect();
        found.sort();
        assert_eq!(found, ["one\n", "three\n", "two\n"]);
        let (len, hits) = c.longest_suffix_match(b"xx shared_marker t");
        assert_eq!(len, b" shared_marker t".len());
        assert_eq!(c.positions(&hits, 10).count(), 2);
        for p in c.positions(&hits, 10) {
            let (path, range) = c.file_range_at(p).unwrap();
            assert!(range.contains(&p));
            assert!(c.slice(range).ends_with(b"\n"), "{path:?}");
        }
    }

    #[test]
    fn the_stride_continues_across_segments() {
        // 3 segments of 20 occurrences each: a cap of 6 takes every tenth, 6 in all.
        let file = "xy ".repeat(20);
        let c = small(&[("a", &file), ("b", &file), ("c", &file)]);
        assert_eq!(c.segment_count(), 3);
        let hits = c.find(b"xy");
        assert_eq!(hits.len(), 60);
        assert_eq!(c.positions(&hits, 6).count(), 6);
        assert_eq!(c.positions(&hits, 60).count(), 60);
    }

    #[test]
    fn a_change_sorts_only_the_changed_file_and_shares_the_rest() {
        let big = format!("fn untouched() {{}}\n{}", "z".repeat(40));
        let c = small(&[("big", &big), ("edited", "let old_text = 1;\n")]);
        let pos = c.positions(&c.find(b"untouched"), 1).next().unwrap();
        let (next, stats) = change(&c, &[("edited", "let new_text = 2;\n")]);
        assert_eq!(stats.sorted_bytes, "let new_text = 2;\n".len() + 1);
        assert!(
            c.shares_segment_at(pos, &next),
            "the big file's segment is shared"
        );
        assert!(next.find(b"old_text").len() <= 1, "a dead copy at most");
        let old = next.find(b"old_text");
        assert_eq!(next.positions(&old, 10).count(), 0, "the old text is dead");
        let new = next.find(b"new_text");
        assert_eq!(next.positions(&new, 10).count(), 1);
        assert_eq!(next.file_count(), 2);

        // The same file changed again: the fresh segment is sorted again, alone.
        let (again, stats) = change(&next, &[("edited", "let newer_text = 3;\n")]);
        assert_eq!(stats.sorted_bytes, "let newer_text = 3;\n".len() + 1);
        assert_eq!(again.positions(&again.find(b"new_text"), 10).count(), 0);
        assert_eq!(again.positions(&again.find(b"newer_text"), 10).count(), 1);
        assert_eq!(again.file_count(), 2);
    }

    #[test]
    fn half_dead_segments_are_compacted_and_removed_files_vanish() {
        let mut c = small(&[
            ("a", &"a".repeat(20)),
            ("b", &"b".repeat(20)),
            ("c", &"c".repeat(20)),
        ]);
        let before = c.memory_bytes();
        for name in ["a", "b"] {
            c = change(&c, &[(name, "")]).0;
        }
        assert_eq!(c.file_count(), 1);
        assert_eq!(c.find(b"aaa").len(), 0, "compacted away, not only dead");
        assert!(c.memory_bytes() < before);
        let whole_c = "c".repeat(20);
        assert_eq!(c.positions(&c.find(whole_c.as_bytes()), 10).count(), 1);
    }

    #[test]
    fn many_small_changes_keep_few_segments_and_bounded_dead_text() {
        let mut c = small(&[]);
        for round in 0..200 {
            let name = format!("f{}", round % 17);
            let text = format!("fn round_{round}() {{}}\n");
            c = change(&c, &[(&name, &text)]).0;
            let dead: usize = c.parts.iter().map(|p| p.dead_bytes).sum();
            let all: usize = c.parts.iter().map(|p| p.segment.text.len()).sum();
            assert!(
                dead * 2 <= all + SMALL.fresh_bytes,
                "round {round}: {dead} of {all} dead"
            );
            let needed = c.text_bytes().div_ceil(SMALL.segment_bytes) + 3;
            assert!(
                c.segment_count() <= needed,
                "round {round}: {} segments",
                c.segment_count()
            );
        }
        assert_eq!(c.file_count(), 17);
        for round in 183..200 {
            let word = format!("round_{round}(");
            assert_eq!(
                c.positions(&c.find(word.as_bytes()), 10).count(),
                1,
                "{word}"
            );
        }
        assert_eq!(c.positions(&c.find(b"round_182("), 10).count(), 0);
    }
}
