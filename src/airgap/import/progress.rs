//! How an import shows that it is moving: a progress bar over the archive's
//! bytes on a terminal (a multi-gigabyte bundle takes minutes), plain log
//! lines otherwise (a script's or a CI's log must not fill with redraws).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::oci::Digest;

/// Where progress goes.
pub struct Progress {
    /// `None`: log lines (`tracing`), for pipes, files and tests.
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar when stderr is a terminal, log lines otherwise.
    pub fn for_stderr() -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress::log();
        }
        let bar = ProgressBar::new(0);
        let style = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, {eta}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress { bar: Some(bar) }
    }

    /// Log lines only.
    pub fn log() -> Progress {
        Progress { bar: None }
    }

    /// The archive's size, once it is open.
    pub fn start(&self, total: u64) {
        if let Some(b) = &self.bar {
            b.set_length(total);
        }
    }

    /// Bytes of the archive read so far.
    pub fn position(&self, pos: u64) {
        if let Some(b) = &self.bar {
            b.set_position(pos);
        }
    }

    /// A blob was stored (`stored`) or found already in the store.
    pub fn blob(&self, d: &Digest, size: u64, stored: bool) {
        let what = if stored { "imported" } else { "already stored" };
        match &self.bar {
            Some(b) => b.set_message(format!("{} {what}", short(d))),
            None => tracing::info!(digest = %d, size, "blob {what}"),
        }
    }

    /// A line worth keeping on screen (an image pinned, a problem).
    pub fn line(&self, text: &str) {
        match &self.bar {
            Some(b) => b.println(text),
            None => tracing::info!("{text}"),
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

fn short(d: &Digest) -> String {
    format!("{}:{}", d.algorithm().as_str(), &d.hex()[..12])
}
