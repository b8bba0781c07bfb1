//! A progress bar on a terminal for long runs; silent when the output is piped or `--json`.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

use crate::report::Row;

/// Counts measured scenarios against the planned number.
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar of `steps` scenarios, drawn on stderr only if it is a terminal and `visible`.
    pub fn new(steps: u64, visible: bool) -> Progress {
        let bar = if visible && std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(steps);
            let style = ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} scenarios  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar
        } else {
            ProgressBar::hidden()
        };
        Progress { bar }
    }

    /// Names what is being measured now.
    pub fn stage(&self, what: &str) {
        self.bar.set_message(what.to_owned());
    }

    /// Counts `row` as measured and hands it back.
    pub fn done(&self, row: Row) -> Row {
        self.bar.inc(1);
        row
    }

    /// A line for the user, printed above the bar (or to stderr when there is none).
    pub fn note(&self, line: &str) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
