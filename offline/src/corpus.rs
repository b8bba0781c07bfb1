//! The indexed text of a workspace and a suffix array over it.
//!
//! All files are concatenated into one buffer, separated by NUL bytes (which never occur in
//! source text or queries, so no match spans two files), and a suffix array (libdivsufsort)
//! answers "where does this string occur" with a binary search. Memory: the text plus 4 bytes
//! per byte of text for the array.

use std::ops::Range;
use std::path::PathBuf;

/// Largest corpus the 32-bit suffix array can address.
pub const MAX_CORPUS_BYTES: usize = i32::MAX as usize;

/// Indexed text of one workspace.
#[derive(Debug, Default)]
pub struct Corpus {
    text: Vec<u8>,
    suffixes: Vec<i32>,
    files: Vec<(PathBuf, Range<usize>)>,
}

/// Builds a [`Corpus`] one file at a time.
#[derive(Debug, Default)]
pub struct CorpusBuilder {
    text: Vec<u8>,
    files: Vec<(PathBuf, Range<usize>)>,
}

impl CorpusBuilder {
    /// Adds one file's text. NUL bytes in it become spaces (they separate files).
    pub fn add(&mut self, path: PathBuf, text: &[u8]) -> bool {
        // libdivsufsort needs the length strictly below i32::MAX.
        if self.text.len() + text.len() + 1 >= MAX_CORPUS_BYTES {
            return false;
        }
        let start = self.text.len();
        self.text
            .extend(text.iter().map(|&b| if b == 0 { b' ' } else { b }));
        self.files.push((path, start..self.text.len()));
        self.text.push(0);
        true
    }

    /// Bytes added so far.
    pub fn len(&self) -> usize {
        self.text.len()
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// Sorts the suffixes (the expensive step: about 0.1 s per MB here).
    pub fn build(self) -> Corpus {
        let mut suffixes = vec![0i32; self.text.len()];
        cdivsufsort::sort_in_place(&self.text, &mut suffixes);
        Corpus {
            text: self.text,
            suffixes,
            files: self.files,
        }
    }
}

impl Corpus {
    /// The indexed text (files separated by NUL).
    pub fn text(&self) -> &[u8] {
        &self.text
    }

    /// Number of files indexed.
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// Bytes of memory held: text and suffix array.
    pub fn memory_bytes(&self) -> usize {
        self.text.capacity() + self.suffixes.capacity() * 4
    }

    /// The file a text position belongs to.
    pub fn file_at(&self, pos: usize) -> Option<&PathBuf> {
        let i = self.files.partition_point(|(_, r)| r.end <= pos);
        self.files
            .get(i)
            .filter(|(_, r)| r.contains(&pos))
            .map(|(p, _)| p)
    }

    /// The file a text position belongs to, with its range in the text.
    pub fn file_range_at(&self, pos: usize) -> Option<(&PathBuf, Range<usize>)> {
        let i = self.files.partition_point(|(_, r)| r.end <= pos);
        self.files
            .get(i)
            .filter(|(_, r)| r.contains(&pos))
            .map(|(p, r)| (p, r.clone()))
    }

    /// The range of the suffix array whose suffixes start with `pattern`.
    pub fn find(&self, pattern: &[u8]) -> Range<usize> {
        let text = &self.text;
        let head = |s: i32| {
            let s = s as usize;
            &text[s..(s + pattern.len()).min(text.len())]
        };
        let lo = self.suffixes.partition_point(|&s| head(s) < pattern);
        let hi = lo + self.suffixes[lo..].partition_point(|&s| head(s) <= pattern);
        lo..hi
    }

    /// The longest suffix of `query` that occurs in the corpus, at most `query.len()` bytes:
    /// its length and its suffix-array range. Binary search on the length works because every
    /// suffix of an occurring string occurs too.
    pub fn longest_suffix_match(&self, query: &[u8]) -> (usize, Range<usize>) {
        let (mut lo, mut hi) = (0usize, query.len());
        let mut best = 0..self.suffixes.len();
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
        if lo == 0 {
            best = 0..0;
        }
        (lo, best)
    }

    /// Text positions of up to `cap` occurrences in a suffix-array range, spread evenly over it.
    pub fn positions(&self, range: Range<usize>, cap: usize) -> impl Iterator<Item = usize> + '_ {
        let n = range.len();
        let step = n.div_ceil(cap.max(1)).max(1);
        self.suffixes[range]
            .iter()
            .step_by(step)
            .map(|&s| s as usize)
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

    #[test]
    fn finds_every_occurrence_and_the_longest_suffix() {
        let c = corpus(&["let x = foo(1);\nlet y = foo(2);\n", "foo(3)"]);
        assert_eq!(c.find(b"foo(").len(), 3);
        assert_eq!(c.find(b"bar").len(), 0);
        let (len, range) = c.longest_suffix_match(b"zzz let y = foo(");
        assert_eq!(len, b"let y = foo(".len());
        assert_eq!(range.len(), 1);
        let (len, range) = c.longest_suffix_match(b"qqq");
        assert_eq!((len, range.len()), (0, 0));
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
        let range = c.find(b"ab");
        assert_eq!(range.len(), 100);
        assert_eq!(c.positions(range, 10).count(), 10);
    }
}
