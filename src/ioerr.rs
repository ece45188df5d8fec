//! File-system errors as one sentence that says what is wrong and what to do, naming the
//! path as it is on the target host (`/etc/default/grub`, not the `--root` prefix).

use anyhow::{anyhow, Result};
use nix::libc;
use std::io;
use std::path::Path;

/// What an admin can do about `e`, when the error has a usual cause; `None` otherwise.
pub fn advice(e: &io::Error) -> Option<&'static str> {
    let text = match (e.raw_os_error(), e.kind()) {
        (Some(libc::EACCES) | Some(libc::EPERM), _) | (_, io::ErrorKind::PermissionDenied) => {
            "permission denied; run gpt with sudo"
        }
        (Some(libc::EISDIR), _) => "it is a directory, not a file; move it aside and run gpt again",
        (Some(libc::ENOTDIR), _) => {
            "a file stands where a folder of that path should be; move it aside and run gpt again"
        }
        (Some(libc::ENOSPC) | Some(libc::EDQUOT), _) => {
            "no space left on the file system; free some space and run gpt again"
        }
        (Some(libc::EROFS), _) => {
            "the file system is read-only; remount it read-write and run gpt again"
        }
        (Some(libc::ELOOP), _) => {
            "too many levels of symbolic links; fix the link and run gpt again"
        }
        (_, io::ErrorKind::InvalidData) => {
            "it is not UTF-8 text, and gpt edits only text files; fix it or move it aside"
        }
        _ => return None,
    };
    Some(text)
}

/// `cannot VERB PATH: ADVICE` (or `: ERROR` when there is no usual cause), one line, no chain.
pub fn error(verb: &str, abs: &Path, e: &io::Error) -> anyhow::Error {
    match advice(e) {
        Some(a) => anyhow!("cannot {verb} {}: {a}", abs.display()),
        None => anyhow!("cannot {verb} {}: {e}", abs.display()),
    }
}

/// `io_result.io_ctx("read", path)`: [`error`] for the `Err` side.
pub trait IoContext<T> {
    fn io_ctx(self, verb: &str, abs: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn io_ctx(self, verb: &str, abs: &Path) -> Result<T> {
        self.map_err(|e| error(verb, abs, &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(errno: i32) -> io::Error {
        io::Error::from_raw_os_error(errno)
    }

    #[test]
    fn usual_causes_say_what_to_do_and_name_the_host_path() {
        let p = Path::new("/etc/default/grub");
        for (e, want) in [
            (
                os(libc::EACCES),
                "cannot read /etc/default/grub: permission denied; run gpt with sudo",
            ),
            (
                os(libc::EISDIR),
                "cannot read /etc/default/grub: it is a directory, not a file; move it aside",
            ),
            (
                os(libc::ENOTDIR),
                "a file stands where a folder of that path should be",
            ),
            (
                os(libc::ENOSPC),
                "no space left on the file system; free some space",
            ),
            (os(libc::EROFS), "the file system is read-only"),
            (
                io::Error::new(io::ErrorKind::InvalidData, "x"),
                "it is not UTF-8 text",
            ),
        ] {
            let msg = format!("{:#}", error("read", p, &e));
            assert!(msg.contains(want), "{msg}");
            assert_eq!(msg.lines().count(), 1, "{msg}");
        }
    }

    #[test]
    fn other_errors_keep_the_system_message() {
        let msg = format!("{:#}", error("write", Path::new("/x"), &os(libc::EIO)));
        assert!(
            msg.starts_with("cannot write /x: Input/output error"),
            "{msg}"
        );
        assert!(advice(&os(libc::EIO)).is_none());
    }
}
