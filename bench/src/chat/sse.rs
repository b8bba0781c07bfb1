//! Reading OpenAI-style chat streams as bytes arrive: the text of each `data:` event's
//! `choices[0].delta.content`, whatever the chunking (and with HTTP/1.1's chunked framing
//! around it: llama.cpp sends each event as a chunk of its own, so an event's bytes are never
//! split by a chunk header).

/// Finds the content of each whole event in the bytes fed so far.
#[derive(Debug, Default)]
pub struct ContentScanner {
    buffer: Vec<u8>,
    /// Events whose JSON did not parse (reported, never guessed at).
    pub unreadable: usize,
}

impl ContentScanner {
    /// Adds `bytes`; the non-empty contents of the events they completed, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buffer.extend_from_slice(bytes);
        let mut found = Vec::new();
        let mut consumed = 0;
        loop {
            let rest = &self.buffer[consumed..];
            let Some(start) = find(rest, b"data: ") else {
                // Keep a tail that may hold the start of the marker.
                consumed = self.buffer.len().saturating_sub(5).max(consumed);
                break;
            };
            let Some(len) = find(&rest[start..], b"\n\n") else {
                consumed += start;
                break;
            };
            let data = &rest[start + 6..start + len];
            consumed += start + len + 2;
            if data.trim_ascii() == b"[DONE]" {
                continue;
            }
            match serde_json::from_slice::<serde_json::Value>(data) {
                Ok(event) => {
                    if let Some(text) = event["choices"][0]["delta"]["content"].as_str() {
                        if !text.is_empty() {
                            found.push(text.to_owned());
                        }
                    }
                }
                Err(_) => self.unreadable += 1,
            }
        }
        self.buffer.drain(..consumed);
        found
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_are_found_whatever_the_chunking() {
        let stream = b"1f\r\ndata: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":null}}]}\n\n\r\n\
data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n\
data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\ndata: [DONE]\n\n";
        for size in [1, 3, 7, 40, stream.len()] {
            let mut scanner = ContentScanner::default();
            let mut texts = Vec::new();
            for piece in stream.chunks(size) {
                texts.extend(scanner.feed(piece));
            }
            assert_eq!(texts, ["Hel", "lo"], "pieces of {size}");
            assert_eq!(scanner.unreadable, 0);
        }
    }
}
