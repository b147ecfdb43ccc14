//! What the command reports when it fails: a message, and the detail and
//! hint lines PostgreSQL's own client programs print after it
//! (`pg_branch: error: …`, `pg_branch: detail: …`, `pg_branch: hint: …`).

use pg_branch_storage::errno_text;
use postgres::error::SqlState;
use std::fmt;
use std::io;
use std::path::Path;

const PRIVILEGE_HINT: &str = "Connect as a superuser; a role with REPLICATION also needs \
    the privilege named above, and EXECUTE on pg_backup_start() and pg_backup_stop().";

#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl Failure {
    pub fn new(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Failure {
        self.detail = Some(detail.into());
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Failure {
        self.hint = Some(hint.into());
        self
    }

    /// `could not <what> "<path>": <strerror>`, as the server words it.
    pub fn io(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Failure {
        let path = path.to_path_buf();
        move |e| {
            Failure::new(format!(
                "could not {what} \"{}\": {}",
                path.display(),
                errno_text(&e)
            ))
        }
    }

    /// A failed statement on the source server: its message, detail and
    /// hint, after what was being done. A missing privilege (42501, worded
    /// differently by each major version) gets a hint of what is needed.
    pub fn sql(doing: &'static str) -> impl FnOnce(postgres::Error) -> Failure {
        move |e| match e.as_db_error() {
            Some(db) => Failure {
                message: format!("{doing}: {}", db.message()),
                detail: db.detail().map(str::to_string),
                hint: db.hint().map(str::to_string).or_else(|| {
                    (*db.code() == SqlState::INSUFFICIENT_PRIVILEGE).then(|| PRIVILEGE_HINT.into())
                }),
            },
            None => Failure::new(format!("{doing}: {e}")),
        }
    }
}

impl From<pg_branch_storage::Error> for Failure {
    fn from(e: pg_branch_storage::Error) -> Failure {
        Failure::new(e.to_string())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pg_branch: error: {}", self.message)?;
        if let Some(d) = &self.detail {
            write!(f, "\npg_branch: detail: {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\npg_branch: hint: {h}")?;
        }
        Ok(())
    }
}
