//! What the user's `ssh` said on stderr, read as it passes through to the user's terminal, so
//! that a failure (exit status 255) is explained by its real cause: an unknown or changed host
//! key, a master that is shutting down, or a refusal the master already put into words. Any
//! other failure keeps the generic hint about host, port, user and authorized_keys.
//!
//! This reads OpenSSH's own sentences because ssh reports these causes no other way (its exit
//! status is 255 for all of them); the master's sentences it looks for are the ones it sends as
//! a disconnect reason, typed once as `commands::Farewell`.

use std::io::{BufRead, BufReader, Read, Write};
use std::thread::JoinHandle;

use crate::commands::{Farewell, FarewellKind};

/// The causes of an ssh failure worth their own advice.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SshTrouble {
    /// ssh refused the master's host key (unknown with strict checking, or changed).
    pub host_key: bool,
    /// The master said it is shutting down.
    pub shutting_down: bool,
    /// The master closed the connection with its own reason (already printed above).
    pub master_explained: bool,
}

impl SshTrouble {
    /// Notes what one line of ssh's stderr says.
    pub fn observe(&mut self, line: &str) {
        const HOST_KEY_MARKERS: [&str; 5] = [
            "Host key verification failed",
            "REMOTE HOST IDENTIFICATION HAS CHANGED",
            "host key for", // "No ED25519 host key is known for ..." / "Host key for X has changed"
            "host key is known for",
            "Offending",
        ];
        let lower = line.to_ascii_lowercase();
        if HOST_KEY_MARKERS
            .iter()
            .any(|marker| lower.contains(&marker.to_ascii_lowercase()))
        {
            self.host_key = true;
        }
        match Farewell::recognise(line) {
            Some(FarewellKind::ShuttingDown) => self.shutting_down = true,
            Some(FarewellKind::LoginRefused) => self.master_explained = true,
            None => {}
        }
    }
}

/// Copies `stderr` (ssh's) to our stderr line by line, noting what it says; the thread's result
/// is what was seen when ssh closed its stderr.
pub fn pass_through(stderr: impl Read + Send + 'static) -> JoinHandle<SshTrouble> {
    std::thread::spawn(move || {
        let mut trouble = SshTrouble::default();
        let mut reader = BufReader::new(stderr);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    trouble.observe(&String::from_utf8_lossy(&line));
                    let mut ours = std::io::stderr().lock();
                    let _ = ours.write_all(&line);
                    let _ = ours.flush();
                }
            }
        }
        trouble
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(lines: &[&str]) -> SshTrouble {
        let mut trouble = SshTrouble::default();
        for line in lines {
            trouble.observe(line);
        }
        trouble
    }

    #[test]
    fn host_key_failures_of_openssh() {
        for line in [
            "Host key verification failed.",
            "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @",
            "No ED25519 host key is known for [127.0.0.1]:2222 and you have requested strict checking.",
            "Host key for [127.0.0.1]:2222 has changed and you have requested strict checking.",
        ] {
            assert!(seen(&[line]).host_key, "{line}");
        }
    }

    #[test]
    fn the_masters_own_reasons() {
        let shutting = seen(&["buildbot: the master is shutting down"]);
        assert!(shutting.shutting_down && !shutting.host_key);
        let refused = seen(&[
            "Received disconnect from 127.0.0.1 port 2222:14: buildbot: no unix account bob on this master",
        ]);
        assert!(refused.master_explained && !refused.host_key && !refused.shutting_down);
    }

    #[test]
    fn a_plain_auth_failure_is_none_of_these() {
        let trouble = seen(&["bob@127.0.0.1: Permission denied (publickey)."]);
        assert_eq!(trouble, SshTrouble::default());
    }
}
