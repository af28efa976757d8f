//! The try spool: the maildir (tmp/new/cur/rejected), the job-spec codec, who may write into
//! it, taking jobs in over SSH, and the master's watcher. Only this module reads and writes the
//! spool directory.

pub mod dirs;
pub mod maildir;
pub mod submit;
pub mod watcher;
