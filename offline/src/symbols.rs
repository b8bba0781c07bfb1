//! Completing the identifier at the cursor from the editor's symbols (the request's
//! `context.lsp_symbols`), for when the workspace's text has no evidence.

use crate::Prediction;

/// Shortest partial identifier worth completing: one character matches too much.
const MIN_TYPED: usize = 2;

/// If the prefix ends inside an identifier and the symbols name identifiers that continue it,
/// proposes the rest of the most frequent one. Confidence is the share of the matching symbol
/// occurrences that agree, halved: a symbol list says what exists, not what comes next.
pub fn complete_identifier(prefix: &str, symbols: &str) -> Option<Prediction> {
    let typed_start = prefix
        .char_indices()
        .rev()
        .take_while(|(_, c)| is_ident(*c))
        .last()
        .map(|(i, _)| i)?;
    let typed = &prefix[typed_start..];
    if typed.chars().count() < MIN_TYPED || typed.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    // Counted in a map: a list searched for each symbol made this quadratic in the symbols'
    // count (80,000 of them took 8 s, issue 13 finding 3); it is one pass now.
    let mut counts: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
    for symbol in symbols.split(|c: char| !is_ident(c)) {
        if symbol.len() > typed.len() && symbol.starts_with(typed) {
            *counts.entry(symbol).or_default() += 1;
        }
    }
    let total: u32 = counts.values().sum();
    let (best, n) = counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(a.0)))?;
    Some(Prediction {
        text: best[typed.len()..].to_owned(),
        confidence: 0.5 * n as f32 / total as f32,
    })
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completes_a_symbol_the_cursor_is_typing() {
        let symbols = "fn spawn_blocking(f: F)\nstruct SpawnHandle\nfn spawn_local";
        let p = complete_identifier("let h = tokio::task::spawn_bl", symbols).unwrap();
        assert_eq!(p.text, "ocking");
        assert!(p.confidence > 0.0 && p.confidence <= 0.5);
        let two = complete_identifier("x.spawn_", symbols).unwrap();
        assert!(two.confidence < 0.5, "two candidates share the evidence");
    }

    #[test]
    fn many_symbols_are_counted_whatever_their_order() {
        // 80,000 distinct symbols sharing the typed start: quadratic work took 8 s.
        let symbols: String = (0..80_000).map(|i| format!("fn spawn_{i}()\n")).collect();
        let started = std::time::Instant::now();
        let p = complete_identifier("x.spawn_", &symbols).unwrap();
        // Ties go to the first name in order, whatever the map's order.
        assert_eq!(p.text, "0");
        println!("80,000 symbols: {:?}", started.elapsed());
    }

    #[test]
    fn needs_a_partial_identifier_and_a_match() {
        assert!(complete_identifier("let x = ", "foo bar").is_none());
        assert!(
            complete_identifier("let x = f", "foo").is_none(),
            "one character is too little"
        );
        assert!(complete_identifier("let x = zz", "foo bar").is_none());
        assert!(complete_identifier("é", "éé").is_none());
        assert_eq!(
            complete_identifier("let ün", "ünïcode").unwrap().text,
            "ïcode"
        );
    }
}
