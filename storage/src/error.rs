//! The crate's error type: a failed filesystem operation with the path it
//! failed on, and the `strerror()` text its message ends with.

use std::io;
use std::path::{Path, PathBuf};

/// A failed filesystem operation, with the path it failed on: what users
/// need to see ("could not reflink file \"…/16384\": No space left on
/// device"), and the errno the server maps to a SQLSTATE.
#[derive(Debug, thiserror::Error)]
#[error("could not {op} \"{}\": {}", .path.display(), errno_text(.source))]
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

#[cfg(test)]
mod tests {
    use super::Error;
    use std::io;

    /// The server shows these messages as they are, and tests compare them.
    #[test]
    fn messages_read_like_the_servers() {
        let e = Error {
            op: "reflink file",
            path: "/data/base/16384/1259".into(),
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert_eq!(
            e.to_string(),
            "could not reflink file \"/data/base/16384/1259\": No space left on device"
        );
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        let source = std::error::Error::source(&e).expect("the io::Error is the source");
        assert_eq!(
            source.to_string(),
            io::Error::from_raw_os_error(libc::ENOSPC).to_string()
        );
        let e = Error {
            op: "convert",
            path: "/data/base/16384".into(),
            source: io::Error::new(io::ErrorKind::Unsupported, "only btrfs has subvolumes"),
        };
        assert_eq!(
            e.to_string(),
            "could not convert \"/data/base/16384\": only btrfs has subvolumes"
        );
    }
}
