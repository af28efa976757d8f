//! Ctrl-C while `try --wait` follows builds: the terminal sends SIGINT to ssh and to us alike.
//! ssh ends (and the master learns the submitter went away); we catch ours instead of dying with
//! it, so the last line can say what happened to the builds.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn note_interrupt(_: nix::libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT noted instead of ending the process, until this is dropped.
pub struct Caught {
    previous: SigAction,
}

impl Caught {
    /// Whether SIGINT came since [`catch`].
    pub fn happened(&self) -> bool {
        INTERRUPTED.load(Ordering::SeqCst)
    }
}

impl Drop for Caught {
    fn drop(&mut self) {
        // SAFETY: puts back the disposition that was there before `catch`.
        let _ = unsafe { sigaction(Signal::SIGINT, &self.previous) };
    }
}

/// Catches SIGINT from now on; `None` if the handler cannot be installed (then Ctrl-C ends us
/// as before).
pub fn catch() -> Option<Caught> {
    INTERRUPTED.store(false, Ordering::SeqCst);
    let action = SigAction::new(
        SigHandler::Handler(note_interrupt),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
    let previous = unsafe { sigaction(Signal::SIGINT, &action) }.ok()?;
    Some(Caught { previous })
}
