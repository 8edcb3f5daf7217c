//! Progress bars on a terminal: one per file in flight and one overall (bytes, speed, ETA).

use std::collections::HashMap;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::client::Reporter;

/// Draws transfer progress with indicatif on stderr.
pub struct Bars {
    multi: MultiProgress,
    overall: Mutex<Option<ProgressBar>>,
    files: Mutex<HashMap<usize, ProgressBar>>,
}

impl Bars {
    /// Bars drawn on stderr.
    pub fn new() -> Self {
        Self {
            multi: MultiProgress::new(),
            overall: Mutex::new(None),
            files: Mutex::new(HashMap::new()),
        }
    }

    fn style(template: &str) -> ProgressStyle {
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ")
    }
}

impl Default for Bars {
    fn default() -> Self {
        Self::new()
    }
}

impl Reporter for Bars {
    fn start(&self, files: usize, bytes: u64) {
        let bar = self.multi.add(ProgressBar::new(bytes));
        bar.set_style(Self::style(
            "{prefix:>20} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
        ));
        bar.set_prefix(format!("{files} file(s)"));
        *self.overall.lock().unwrap_or_else(|p| p.into_inner()) = Some(bar);
    }

    fn file_start(&self, index: usize, name: &str, size: u64, done: u64) {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let bar = files.entry(index).or_insert_with(|| {
            let bar = self.multi.insert_from_back(1, ProgressBar::new(size));
            bar.set_style(Self::style(
                "{prefix:>20} [{bar:30}] {binary_bytes}/{binary_total_bytes} {wide_msg}",
            ));
            let short: String = if name.chars().count() > 20 {
                name.chars().take(19).chain(std::iter::once('…')).collect()
            } else {
                name.to_string()
            };
            bar.set_prefix(short);
            bar
        });
        bar.set_position(done);
    }

    fn advance(&self, index: usize, bytes: u64) {
        if let Some(bar) = self
            .files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&index)
        {
            bar.inc(bytes);
        }
        if let Some(bar) = self
            .overall
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            bar.inc(bytes);
        }
    }

    fn file_done(&self, index: usize) {
        if let Some(bar) = self
            .files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&index)
        {
            bar.finish_and_clear();
        }
    }

    fn note(&self, text: &str) {
        let _ = self.multi.println(text);
    }

    fn finish(&self) {
        for (_, bar) in self.files.lock().unwrap_or_else(|p| p.into_inner()).drain() {
            bar.finish_and_clear();
        }
        if let Some(bar) = self
            .overall
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            bar.finish_and_clear();
        }
    }
}

/// How often [`Lines`] prints: often enough that a CI log shows a transfer moving.
pub const LINE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3);

/// Progress where no terminal shows bars (a pipe, a CI log): one line on stderr every
/// [`LINE_INTERVAL`] while bytes move, with the share done, the rate and the time left.
pub struct Lines {
    verb: &'static str,
    started: std::time::Instant,
    total: std::sync::atomic::AtomicU64,
    moved: std::sync::atomic::AtomicU64,
    last: Mutex<std::time::Instant>,
}

impl Lines {
    /// Lines that name the transfer by `verb` ("push", "pull").
    pub fn new(verb: &'static str) -> Self {
        let now = std::time::Instant::now();
        Self {
            verb,
            started: now,
            total: Default::default(),
            moved: Default::default(),
            last: Mutex::new(now),
        }
    }
}

impl Reporter for Lines {
    fn start(&self, _files: usize, bytes: u64) {
        self.total
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    fn advance(&self, _index: usize, bytes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let moved = self.moved.fetch_add(bytes, Relaxed) + bytes;
        let now = std::time::Instant::now();
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if now.duration_since(*last) < LINE_INTERVAL {
                return;
            }
            *last = now;
        }
        let total = self.total.load(Relaxed).max(moved);
        let elapsed = now.duration_since(self.started).as_secs_f64();
        eprintln!("{}: {}", self.verb, progress_line(moved, total, elapsed));
    }

    fn note(&self, text: &str) {
        eprintln!("{}: {text}", self.verb);
    }
}

/// "512.0 MiB of 1.0 GiB (50%), 85.3 MiB/s, 6 s left, 6 s elapsed".
pub fn progress_line(moved: u64, total: u64, elapsed: f64) -> String {
    let rate = moved as f64 / elapsed.max(0.001);
    let percent = match total {
        0 => 100,
        t => moved.saturating_mul(100) / t,
    };
    let left = match rate > 0.0 {
        true => format!("{} s left", ((total - moved) as f64 / rate).ceil() as u64),
        false => "time left unknown".to_string(),
    };
    format!(
        "{} of {} ({percent}%), {}/s, {left}, {} s elapsed",
        crate::units::human_size(moved),
        crate::units::human_size(total),
        crate::units::human_size(rate as u64),
        elapsed.round() as u64
    )
}

/// " in 12.3 s (83.2 MiB/s)": how long a transfer of `bytes` took, for its last line.
pub fn took(bytes: u64, elapsed: f64) -> String {
    let rate = bytes as f64 / elapsed.max(0.001);
    format!(
        " in {elapsed:.1} s ({}/s)",
        crate::units::human_size(rate as u64)
    )
}

/// Passes every report on, noting whether any file went on from bytes an earlier run left:
/// bytes in place when the file is first reported (later reports of the same file, one per
/// range, count this run's bytes too).
pub struct Observed {
    inner: std::sync::Arc<dyn Reporter>,
    resumed: std::sync::atomic::AtomicBool,
    seen: Mutex<std::collections::HashSet<usize>>,
}

impl Observed {
    /// Observes `inner`.
    pub fn new(inner: std::sync::Arc<dyn Reporter>) -> Self {
        Self {
            inner,
            resumed: Default::default(),
            seen: Default::default(),
        }
    }

    /// True when a file started from bytes an earlier run left.
    pub fn resumed(&self) -> bool {
        self.resumed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Reporter for Observed {
    fn start(&self, files: usize, bytes: u64) {
        self.inner.start(files, bytes);
    }

    fn file_start(&self, index: usize, name: &str, size: u64, done: u64) {
        let first = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(index);
        if first && done > 0 {
            self.resumed
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.inner.file_start(index, name, size, done);
    }

    fn advance(&self, index: usize, bytes: u64) {
        self.inner.advance(index, bytes);
    }

    fn file_done(&self, index: usize) {
        self.inner.file_done(index);
    }

    fn note(&self, text: &str) {
        self.inner.note(text);
    }

    fn finish(&self) {
        self.inner.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_progress_line_tells_share_rate_and_time_left() {
        assert_eq!(
            progress_line(512 << 20, 1 << 30, 4.0),
            "512.0 MiB of 1.0 GiB (50%), 128.0 MiB/s, 4 s left, 4 s elapsed"
        );
        assert_eq!(took(100 << 20, 2.0), " in 2.0 s (50.0 MiB/s)");
        assert!(progress_line(0, 10, 0.0).contains("time left unknown"));
    }
}
