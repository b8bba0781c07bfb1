//! Cutting text near the cursor to a byte budget without splitting a character.
//!
//! Every consumer of the text around the cursor bounds it: the cache key, the offline model's
//! query, a provider's prompt. They all cut here, so a multi-byte character at the edge is
//! handled the same way everywhere.

/// The last `max` bytes of `s`, cut at a character boundary (so possibly fewer).
pub fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// The first `max` bytes of `s`, cut at a character boundary (so possibly fewer).
pub fn head(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_never_split_a_character() {
        let s = "añb€c";
        for max in 0..=s.len() + 1 {
            assert!(tail(s, max).len() <= max);
            assert!(head(s, max).len() <= max);
            assert!(s.ends_with(tail(s, max)));
            assert!(s.starts_with(head(s, max)));
        }
        assert_eq!(tail(s, 4), "€c");
        assert_eq!(head(s, 2), "a");
    }
}
