//! Pushing a version: negotiate, upload (streamed, resumable, hashed as it arrives),
//! commit (verify, then append atomically), abort.
//!
//! One file per step: `session` holds what a negotiated push stores, `negotiate` opens
//! it, `receive` streams a file's bytes, or a range of them, and `ranges` writes and
//! records its parts in any order (over the state of [`super::upload`]), `commit` makes the version and `abort` ends a push without one.

mod abort;
mod commit;
mod negotiate;
mod ranges;
mod receive;
mod session;
#[cfg(test)]
mod testing;

pub use session::{SessionFile, UploadSession};
