//! The crate's error type: a failed filesystem operation with the path it
//! failed on, and the `strerror()` text its message ends with.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// A failed filesystem operation, with the path it failed on: what users
/// need to see ("could not reflink file \"…/16384\": No space left on
/// device"), and the errno the server maps to a SQLSTATE.
#[derive(Debug)]
pub struct Error {
    /// What was being done, as a verb phrase: "reflink file", "create directory".
    pub op: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

impl Error {
    pub(crate) fn at(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
        let path = path.to_path_buf();
        move |source| Error { op, path, source }
    }

    pub fn raw_os_error(&self) -> Option<i32> {
        self.source.raw_os_error()
    }

    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "could not {} \"{}\": {}",
            self.op,
            self.path.display(),
            errno_text(&self.source)
        )
    }
}

/// `strerror()` of an OS error, without Rust's " (os error N)" suffix, so
/// messages read like the server's own `%m`.
pub fn errno_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        // SAFETY: glibc's strerror returns a NUL-terminated string that
        // stays valid: static for known errnos, thread-local otherwise.
        Some(n) => unsafe { std::ffi::CStr::from_ptr(libc::strerror(n)) }
            .to_string_lossy()
            .into_owned(),
        None => e.to_string(),
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}
