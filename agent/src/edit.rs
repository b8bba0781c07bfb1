//! Edits a model asks for: replacing one exact passage, or applying a unified diff.

/// Why an edit cannot be applied (told to the model, which may try again).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EditError {
    /// The passage to replace is not in the file.
    #[error(
        "the text to replace was not found in {0}: read the file and copy the passage exactly"
    )]
    NotFound(String),
    /// The passage occurs more than once.
    #[error("the text to replace occurs {count} times in {file}: include more lines around it so that it occurs once")]
    Ambiguous {
        /// The file.
        file: String,
        /// How often.
        count: usize,
    },
    /// The diff does not parse.
    #[error("the diff for {file} is not a unified diff: {reason}")]
    BadDiff {
        /// The file.
        file: String,
        /// Why.
        reason: String,
    },
    /// The diff does not fit the file as it is.
    #[error("the diff does not apply to {file} as it is now: {reason}; read the file again and make the diff from it")]
    DoesNotApply {
        /// The file.
        file: String,
        /// Why.
        reason: String,
    },
    /// The file is not text.
    #[error("{0} is not UTF-8 text: it cannot be edited as text")]
    NotText(String),
}

/// `text` with the one occurrence of `search` replaced by `replacement`.
pub fn replace(
    file: &str,
    text: &str,
    search: &str,
    replacement: &str,
) -> Result<String, EditError> {
    if search.is_empty() {
        return Err(EditError::NotFound(file.to_owned()));
    }
    match text.matches(search).count() {
        0 => Err(EditError::NotFound(file.to_owned())),
        1 => Ok(text.replacen(search, replacement, 1)),
        count => Err(EditError::Ambiguous {
            file: file.to_owned(),
            count,
        }),
    }
}

/// `text` with the unified diff `diff` applied (its `---`/`+++` headers, if any, are not
/// checked: the file was named by the call).
pub fn patch(file: &str, text: &str, diff: &str) -> Result<String, EditError> {
    let diff = if diff.ends_with('\n') {
        diff.to_owned()
    } else {
        format!("{diff}\n")
    };
    let parsed = diffy::Patch::from_str(&diff).map_err(|e| EditError::BadDiff {
        file: file.to_owned(),
        reason: e.to_string(),
    })?;
    if parsed.hunks().is_empty() {
        return Err(EditError::BadDiff {
            file: file.to_owned(),
            reason: "it has no hunk (a line starting \"@@ -\")".to_owned(),
        });
    }
    diffy::apply(text, &parsed).map_err(|e| EditError::DoesNotApply {
        file: file.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replacement_needs_one_exact_occurrence() {
        let text = "fn a() {}\nfn b() {}\nfn b() {}\n";
        assert_eq!(
            replace("x.rs", text, "fn a() {}", "fn a() { todo!() }").unwrap(),
            "fn a() { todo!() }\nfn b() {}\nfn b() {}\n"
        );
        assert!(matches!(
            replace("x.rs", text, "fn c", ""),
            Err(EditError::NotFound(_))
        ));
        assert!(matches!(
            replace("x.rs", text, "fn b() {}", ""),
            Err(EditError::Ambiguous { count: 2, .. })
        ));
    }

    #[test]
    fn a_unified_diff_applies_or_says_why_not() {
        let text = "one\ntwo\nthree\n";
        let diff = "--- a/x.txt\n+++ b/x.txt\n@@ -1,3 +1,3 @@\n one\n-two\n+TWO\n three\n";
        assert_eq!(patch("x.txt", text, diff).unwrap(), "one\nTWO\nthree\n");
        let stale = "@@ -1,3 +1,3 @@\n one\n-deux\n+TWO\n three\n";
        assert!(matches!(
            patch("x.txt", text, stale),
            Err(EditError::DoesNotApply { .. })
        ));
        assert!(matches!(
            patch("x.txt", text, "not a diff at all"),
            Err(EditError::BadDiff { .. })
        ));
    }
}
