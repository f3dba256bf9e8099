//! Email written to a local directory instead of sent (`messaging.mailbox_dir`, development
//! with no SMTP relay): each message is one `<delivery id>.eml` file holding exactly the bytes
//! an SMTP relay would have been given (the same [`super::smtp::message`]), readable by any mail
//! client. The file is written under a temporary name, flushed to disk and renamed, so a reader
//! never sees half a message; a delivery sent again after a crash rewrites its own file rather
//! than adding a second one. A write that fails (a full disk, no permission) is a fault of the
//! way out ([`SendError::relay`]): the delivery is retried until it is fixed, never given up.

use std::path::{Path, PathBuf};

use super::SendError;
use super::smtp::{Email, message};

/// Writes [`Email`]s to one directory.
#[derive(Clone, Debug)]
pub struct MailboxDir {
    dir: PathBuf,
}

impl MailboxDir {
    /// Email into `dir` (created when the first message is written).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Write `email` as `<name>.eml`; `Ok` says where. `name` is the delivery's id: letters,
    /// digits and `-` only (anything else is refused, so a name cannot leave the directory).
    pub async fn write(&self, name: &str, email: &Email) -> Result<String, SendError> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(SendError::permanent(format!("mailbox: {name:?} is not a file name")));
        }
        let bytes = message(email)?.formatted();
        let dir = self.dir.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || write_atomically(&dir, &name, &bytes))
            .await
            .map_err(|e| SendError::relay(format!("mailbox: {e}")))?
    }
}

fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<String, SendError> {
    use std::io::Write as _;
    let failed = |what: &str, path: &Path, e: std::io::Error| {
        SendError::relay(format!("mailbox: {what} {}: {e}", path.display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| failed("cannot create", dir, e))?;
    let path = dir.join(format!("{name}.eml"));
    let tmp = dir.join(format!(".{name}.eml.tmp"));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(failed("cannot write", &tmp, e));
    }
    std::fs::rename(&tmp, &path).map_err(|e| failed("cannot rename to", &path, e))?;
    // The rename itself is on disk once the directory is.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(format!("written to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email() -> Email {
        Email {
            message_id: "0191-abc@clm".into(),
            from: "CLM <clm@localhost>".into(),
            to: "ada@example.com".into(),
            subject: "Welcome, Ada".into(),
            text: Some("Hello Ada".into()),
            ..Email::default()
        }
    }

    #[tokio::test]
    async fn each_delivery_is_one_file_rewritten_not_doubled() {
        let tmp = tempfile::tempdir().unwrap();
        let mailbox = MailboxDir::new(tmp.path().join("mail"));
        let said = mailbox.write("0191-abc", &email()).await.unwrap();
        assert!(said.ends_with("0191-abc.eml"), "{said}");
        let first = std::fs::read_to_string(tmp.path().join("mail/0191-abc.eml")).unwrap();
        assert!(first.contains("Message-ID: <0191-abc@clm>\r\n"), "{first}");
        assert!(first.contains("Subject: Welcome, Ada\r\n"), "{first}");
        assert!(first.trim_end().ends_with("\r\n\r\nHello Ada"), "{first}");
        // Sent again (a crash after the write, before the outcome was recorded): same file.
        mailbox.write("0191-abc", &email()).await.unwrap();
        let names: Vec<_> =
            std::fs::read_dir(tmp.path().join("mail")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("0191-abc.eml")]);
    }

    #[tokio::test]
    async fn names_cannot_leave_the_directory_and_write_errors_are_transient() {
        let tmp = tempfile::tempdir().unwrap();
        let mailbox = MailboxDir::new(tmp.path());
        let refused = mailbox.write("../x", &email()).await.unwrap_err();
        assert!(refused.permanent, "{refused}");
        // A directory that cannot be made (a file is in the way): retried later.
        std::fs::write(tmp.path().join("blocked"), b"").unwrap();
        let blocked = MailboxDir::new(tmp.path().join("blocked").join("mail"));
        let err = blocked.write("0191-abc", &email()).await.unwrap_err();
        assert!(!err.permanent && err.relay && err.detail.contains("cannot create"), "{err}");
    }
}
