//! The routes' handlers: each extracts, calls the front door, maps its
//! error with `?` and answers. No pipeline rule and no admission of their
//! own, and nothing that blocks a tokio worker.

pub(super) mod people;
#[cfg(feature = "profiling")]
pub(super) mod profiling;
pub(super) mod system;
pub(super) mod work;
