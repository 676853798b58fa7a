//! Progress of long bundle operations: bars on a terminal (bytes, rate,
//! ETA, one line per image), plain log lines otherwise, so that a cron
//! job's log shows each image once instead of a stream of redraws.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where progress goes. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct Progress {
    kind: Kind,
    done: Arc<AtomicU64>,
    total: Arc<AtomicU64>,
    started: Instant,
}

#[derive(Clone)]
enum Kind {
    Bars { multi: MultiProgress, overall: ProgressBar },
    Lines,
    Quiet,
}

impl Progress {
    /// Bars when stderr is a terminal, log lines when it is not.
    pub fn for_stderr() -> Progress {
        if std::io::stderr().is_terminal() {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let overall = multi.add(ProgressBar::new(0));
            overall.set_style(
                ProgressStyle::with_template(
                    "{msg:>12} [{bar:32}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            overall.enable_steady_tick(Duration::from_millis(200));
            Progress::with(Kind::Bars { multi, overall })
        } else {
            Progress::with(Kind::Lines)
        }
    }

    /// Nothing reported (library callers, tests).
    pub fn quiet() -> Progress {
        Progress::with(Kind::Quiet)
    }

    fn with(kind: Kind) -> Progress {
        Progress { kind, done: Arc::default(), total: Arc::default(), started: Instant::now() }
    }

    /// Starts the overall count: `what` (e.g. "writing") over `total` bytes.
    pub fn start(&self, what: &str, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        match &self.kind {
            Kind::Bars { overall, .. } => {
                overall.set_length(total);
                overall.set_message(what.to_string());
            }
            Kind::Lines => tracing::info!("{what}: {}", human_bytes(total)),
            Kind::Quiet => {}
        }
    }

    /// One image's line, for `bytes` of its content.
    pub fn image(&self, name: &str, bytes: u64) -> ImageProgress {
        let bar = match &self.kind {
            Kind::Bars { multi, overall } => {
                let bar = multi.insert_before(overall, ProgressBar::new(bytes));
                bar.set_style(
                    ProgressStyle::with_template("{prefix} {bytes}/{total_bytes} {msg}").expect("a valid template"),
                );
                bar.set_prefix(name.to_string());
                Some(bar)
            }
            _ => None,
        };
        ImageProgress { progress: self.clone(), name: name.to_string(), bytes, bar, started: Instant::now() }
    }

    /// A line that is not about bytes (what was resolved, what is left out).
    pub fn note(&self, line: &str) {
        match &self.kind {
            Kind::Bars { multi, .. } => {
                let _ = multi.println(line);
            }
            Kind::Lines => tracing::info!("{line}"),
            Kind::Quiet => {}
        }
    }

    fn advance(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
        if let Kind::Bars { overall, .. } = &self.kind {
            overall.inc(n);
        }
    }

    /// Ends the bars (leaving the image lines on screen).
    pub fn finish(&self) {
        if let Kind::Bars { overall, .. } = &self.kind {
            overall.finish();
        }
    }
}

/// One image's share of an operation.
pub struct ImageProgress {
    progress: Progress,
    name: String,
    bytes: u64,
    bar: Option<ProgressBar>,
    started: Instant,
}

impl ImageProgress {
    pub fn advance(&self, n: u64) {
        self.progress.advance(n);
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    /// The image is complete; `how` says what happened to it ("written",
    /// "carried by the base").
    pub fn done(self, how: &str) {
        match &self.bar {
            Some(bar) => bar.finish_with_message(how.to_string()),
            None if matches!(self.progress.kind, Kind::Lines) => {
                let (done, total) =
                    (self.progress.done.load(Ordering::Relaxed), self.progress.total.load(Ordering::Relaxed));
                tracing::info!(
                    "{}: {} {how} in {:.1?} ({} of {} overall, {:.0?} so far)",
                    self.name,
                    human_bytes(self.bytes),
                    self.started.elapsed(),
                    human_bytes(done),
                    human_bytes(total),
                    self.progress.started.elapsed(),
                );
            }
            None => {}
        }
    }
}

/// `12.3 MiB`: sizes for people.
pub fn human_bytes(n: u64) -> String {
    indicatif::BinaryBytes(n).to_string()
}
