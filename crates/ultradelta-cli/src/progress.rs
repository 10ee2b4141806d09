//! Progress bars on a terminal; silence otherwise.

use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};
use ultradelta::Progress;

/// Draws one bar per stage on stderr when it is a terminal and `--quiet` is off; prints
/// notes on stderr unless `--quiet`.
pub struct CliProgress {
    quiet: bool,
    bars: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl CliProgress {
    pub fn new(quiet: bool) -> Self {
        CliProgress {
            quiet,
            bars: !quiet && std::io::stderr().is_terminal(),
            bar: Mutex::new(None),
        }
    }
}

impl Progress for CliProgress {
    fn begin(&self, stage: &str, total: u64) {
        if !self.bars {
            return;
        }
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>20} [{bar:40}] {percent:>3}% {human_pos}/{human_len} params, eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(stage.to_string());
        *self.bar.lock().expect("progress lock") = Some(bar);
    }

    fn advance(&self, n: u64) {
        if let Some(b) = self.bar.lock().expect("progress lock").as_ref() {
            b.inc(n);
        }
    }

    fn note(&self, message: &str) {
        if self.quiet {
            return;
        }
        match self.bar.lock().expect("progress lock").as_ref() {
            Some(b) => b.println(message),
            None => {
                use std::io::Write as _;
                let _ = writeln!(std::io::stderr().lock(), "{message}");
            }
        }
    }

    fn end(&self) {
        if let Some(b) = self.bar.lock().expect("progress lock").take() {
            b.finish_and_clear();
        }
    }

    fn cancelled(&self) -> bool {
        crate::interrupt::received().is_some()
    }
}
