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
