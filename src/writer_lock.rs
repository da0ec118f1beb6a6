//! One writer per journal file: the process that writes a journal holds an exclusive lock on
//! a file beside it (`<journal>.lock`) for as long as it runs, and writes who it is into it. A
//! second process (`serve`, `run` or `replay` on the same journal) cannot take the lock: it
//! refuses to start, naming the holder, before it opens the journal.
//!
//! The lock is the operating system's (`flock` on Unix): it goes away with the process that
//! held it, crash included, so a stale lock file never blocks a restart.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The lock of a journal, held until dropped.
#[derive(Debug)]
pub struct WriterLock {
    _file: File,
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("the journal {journal:?} is in use by another process ({holder}); one process writes a journal: stop that one, or give this one another journal.path")]
    Held {
        /// The journal.
        journal: PathBuf,
        /// Who holds it, as it wrote itself into the lock file.
        holder: String,
    },
    /// The lock file could not be opened or locked.
    #[error("cannot lock the journal {journal:?} through {lock:?}: {cause}; check the directory's permissions")]
    Io {
        /// The journal.
        journal: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
}

impl WriterLock {
    /// Takes the lock of `journal`, or fails at once if another process holds it.
    pub fn acquire(journal: &Path) -> Result<WriterLock, LockError> {
        let lock = lock_path(journal);
        let io = |cause| LockError::Io {
            journal: journal.to_owned(),
            lock: lock.clone(),
            cause,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "a process that has not written its name yet".to_owned(),
                    named => named.to_owned(),
                };
                return Err(LockError::Held {
                    journal: journal.to_owned(),
                    holder,
                });
            }
            Err(TryLockError::Error(cause)) => return Err(io(cause)),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", holder()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(WriterLock { _file: file })
    }
}

/// The lock file of `journal`: `<journal>.lock`.
pub fn lock_path(journal: &Path) -> PathBuf {
    let mut name = journal.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// This process, as the lock file names it: `pid 1234, started Sun, 29 Nov 2026 10:00:01 GMT`.
fn holder() -> String {
    format!(
        "pid {}, started {}",
        std::process::id(),
        httpdate::fmt_http_date(SystemTime::now())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_journal_is_refused_and_names_the_holder() {
        let dir = std::env::temp_dir().join(format!("impresario-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let journal = dir.join("runs.db");
        let held = WriterLock::acquire(&journal).unwrap();
        // Another open file description of the same file: flock treats it as another holder.
        let refused = WriterLock::acquire(&journal).unwrap_err().to_string();
        assert!(
            refused.contains(&format!("pid {}", std::process::id())),
            "{refused}"
        );
        assert!(!journal.exists(), "the journal itself is not touched");
        drop(held);
        WriterLock::acquire(&journal).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
