//! How the transfer engine tells its caller what it is doing; the CLI draws bars from it,
//! tests and scripts use [`Silent`].

/// Receives transfer events. Calls come from several tasks at once.
pub trait Reporter: Send + Sync {
    /// A transfer of `files` files and `bytes` bytes (to move, after resumption) begins.
    fn start(&self, _files: usize, _bytes: u64) {}
    /// File `index` (`name`, `size` bytes) starts, with `done` bytes already in place.
    fn file_start(&self, _index: usize, _name: &str, _size: u64, _done: u64) {}
    /// `bytes` more bytes of file `index` moved.
    fn advance(&self, _index: usize, _bytes: u64) {}
    /// File `index` is complete.
    fn file_done(&self, _index: usize) {}
    /// A short status line (verifying, committing, resuming…).
    fn note(&self, _text: &str) {}
    /// The transfer is over.
    fn finish(&self) {}
}

/// A reporter that shows nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Silent;

impl Reporter for Silent {}
