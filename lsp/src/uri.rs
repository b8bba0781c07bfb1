//! `file:` URIs to paths: the daemon indexes the file's repository from its path.

use std::path::PathBuf;

/// The path of a `file:` URI (`file:///home/a/b%20c.rs` → `/home/a/b c.rs`); `None` for other
/// schemes (`untitled:`, `vscode-notebook-cell:`…), a remote host, or a path that does not
/// decode to UTF-8.
pub fn file_path(uri: &str) -> Option<PathBuf> {
    let rest = uri.strip_prefix("file://")?;
    // `file:///p` (empty host) or `file://localhost/p`; any other host is not this machine.
    let path = rest.strip_prefix("localhost").unwrap_or(rest);
    if !path.starts_with('/') {
        return None;
    }
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = path.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_uris_decode_and_others_do_not() {
        assert_eq!(
            file_path("file:///home/a/b%20c.rs"),
            Some("/home/a/b c.rs".into())
        );
        assert_eq!(
            file_path("file://localhost/x/%C3%A9.rs"),
            Some("/x/é.rs".into())
        );
        assert_eq!(file_path("untitled:Untitled-1"), None);
        assert_eq!(file_path("file://server/share/a.rs"), None);
        assert_eq!(file_path("file:///bad%zz"), None);
        assert_eq!(file_path("file:///cut%2"), None);
    }
}
