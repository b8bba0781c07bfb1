//! `reaper.Completion/feedback`: what editors did with the completions they showed (shown,
//! accepted, rejected), counted for `Health`'s acceptance rate. Answered on the loop from
//! memory, like Health.

use reaper_core::schema::{CompletionFeedback, FeedbackEvent, FeedbackStats};
use reaper_core::{Code, Status, WireMessage};

/// Longest provider name accepted in a feedback event (configured names are short).
const MAX_PROVIDER_BYTES: usize = 256;

/// The counters.
#[derive(Debug, Default)]
pub struct Feedback {
    stats: FeedbackStats,
}

impl Feedback {
    /// Counts one event from a request in `encoding`; INVALID_ARGUMENT if it is not one.
    pub fn record(
        &mut self,
        encoding: reaper_core::Encoding,
        message: &[u8],
    ) -> Result<(), Status> {
        let invalid = |why: String| {
            Status::new(
                Code::InvalidArgument,
                format!("reaper.Completion/feedback request: {why}"),
            )
        };
        let event =
            CompletionFeedback::decode(encoding, message).map_err(|e| invalid(e.to_string()))?;
        if event.provider.len() > MAX_PROVIDER_BYTES {
            return Err(invalid(format!(
                "provider is {} bytes, more than {MAX_PROVIDER_BYTES}",
                event.provider.len()
            )));
        }
        let stats = &mut self.stats;
        match event.event {
            FeedbackEvent::Shown => stats.shown += 1,
            FeedbackEvent::Accepted => {
                stats.accepted += 1;
                stats.accepted_chars += u64::from(event.accepted_chars);
            }
            FeedbackEvent::Rejected => stats.rejected += 1,
        }
        Ok(())
    }

    /// The counters now.
    pub fn stats(&self) -> FeedbackStats {
        self.stats.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reaper_core::Encoding;

    fn event(json: &str) -> Vec<u8> {
        json.as_bytes().to_vec()
    }

    #[test]
    fn counts_each_event_and_refuses_what_is_not_one() {
        let mut f = Feedback::default();
        for json in [
            r#"{"event":"shown","provider":"offline","accepted_chars":0}"#,
            r#"{"event":"accepted","provider":"offline","accepted_chars":12}"#,
            r#"{"event":"accepted","provider":"local","accepted_chars":3}"#,
            r#"{"event":"rejected","provider":"offline","accepted_chars":0}"#,
        ] {
            f.record(Encoding::Json, &event(json)).unwrap();
        }
        let s = f.stats();
        assert_eq!(
            (s.shown, s.accepted, s.rejected, s.accepted_chars),
            (1, 2, 1, 15)
        );
        let long = format!(
            r#"{{"event":"shown","provider":"{}","accepted_chars":0}}"#,
            "x".repeat(300)
        );
        for bad in [
            "not json".to_owned(),
            r#"{"event":"liked","provider":"offline","accepted_chars":0}"#.to_owned(),
            long,
        ] {
            let status = f.record(Encoding::Json, bad.as_bytes()).unwrap_err();
            assert_eq!(status.code, Code::InvalidArgument, "{bad}");
        }
        assert_eq!(f.stats().shown, 1, "a refused event counts nothing");
    }
}
