//! `ssh -t master shell BUILDER N` (issue 25): the real OpenSSH client on a real PTY (opened
//! here with openpty, ssh its session leader), relayed by the master over the slave's
//! connection into the held build's directory.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::{
    MasterSetup, PATIENCE, TempAccount, TestKey, TestMaster, current_user, process_running, text,
    wait_until, wait_with_deadline,
};
use crate::repo::Checkout;

/// A master with the `linux` builder on slave s1 (forced by hand) whose one step leaves a file
/// behind and fails, held for `hold_for`.
fn farm(checkout: &Checkout, hold_for: &str) -> TestMaster {
    farm_with(
        checkout,
        hold_for,
        "echo $BUILDBOT_BUILDNUMBER > ran.txt; exit 3",
    )
}

fn farm_with(checkout: &Checkout, hold_for: &str, step: &str) -> TestMaster {
    let setup = MasterSetup {
        slaves: vec!["s1".into()],
        extra_config: format!(
            "\n[[builder]]\nname = \"linux\"\nslaves = [\"s1\"]\nrepo = \"{}\"\nbranch = \"main\"\n\
             hold = {{ on = \"failure\", for = \"{hold_for}\" }}\n\
             steps = [ {{ name = \"step\", command = \"{step}\" }} ]\n\
             \n[[scheduler]]\nkind = \"force\"\nbuilders = [\"linux\"]\n",
            checkout.upstream.display()
        ),
        ..MasterSetup::default()
    };
    TestMaster::start_with(setup)
}

fn force_and_wait(master: &TestMaster, number: u64) -> serde_json::Value {
    let build = force_and_wait_with(master, number, "");
    assert_eq!(build["result"], "failure", "{build}");
    build
}

fn force_and_wait_with(master: &TestMaster, number: u64, flags: &str) -> serde_json::Value {
    let forced = master.ssh(
        &master.user_key,
        &current_user(),
        &format!("force linux --reason look{flags}"),
    );
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
    let mut build = serde_json::Value::Null;
    wait_until(&format!("linux #{number} to finish"), || {
        build = master.newest_build("linux");
        build["number"] == number && build["running"] == false
    });
    build
}

/// `ssh -tt` on a PTY of its own: what it prints is collected by a thread; keystrokes and
/// window sizes go in through the PTY's master side, as a terminal emulator's would.
struct Terminal {
    master: std::fs::File,
    child: Child,
    output: Arc<Mutex<Vec<u8>>>,
    /// Output before this offset was already matched.
    seen: usize,
}

fn winsize(rows: u16, cols: u16) -> nix::libc::winsize {
    nix::libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

impl Terminal {
    fn open(mut ssh: Command, rows: u16, cols: u16) -> Terminal {
        let pair = nix::pty::openpty(Some(&winsize(rows, cols)), None).expect("openpty");
        let slave = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup the pty"));
        ssh.stdin(slave(&pair.slave))
            .stdout(slave(&pair.slave))
            .stderr(slave(&pair.slave));
        // SAFETY: setsid and ioctl are async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut ssh, || {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = ssh.spawn().expect("ssh starts");
        drop(ssh);
        drop(pair.slave);
        let master = std::fs::File::from(pair.master);
        let mut reader = master.try_clone().expect("dup the pty");
        let output = Arc::new(Mutex::new(Vec::new()));
        let collected = Arc::clone(&output);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            // EIO once ssh and everything it started closed the terminal.
            while let Ok(read) = reader.read(&mut buffer) {
                if read == 0 {
                    break;
                }
                collected
                    .lock()
                    .expect("output")
                    .extend_from_slice(&buffer[..read]);
            }
        });
        Terminal {
            master,
            child,
            output,
            seen: 0,
        }
    }

    fn text(&self) -> String {
        text(&self.output.lock().expect("output"))
    }

    fn send(&mut self, keys: &str) {
        self.master.write_all(keys.as_bytes()).expect("type");
    }

    /// Waits until `needle` appears after what was matched before; returns the output up to
    /// and including it.
    fn expect(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let all = self.text();
            if let Some(at) = all.get(self.seen..).and_then(|rest| rest.find(needle)) {
                let end = self.seen + at + needle.len();
                let matched = all[self.seen..end].to_string();
                self.seen = end;
                return matched;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} within {PATIENCE:?}; the terminal shows:\n{all}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn resize(&self, rows: u16, cols: u16) {
        let size = winsize(rows, cols);
        // SAFETY: TIOCSWINSZ reads one winsize; the kernel then signals ssh (SIGWINCH).
        let done =
            unsafe { nix::libc::ioctl(self.master.as_raw_fd(), nix::libc::TIOCSWINSZ, &size) };
        assert_eq!(done, 0, "TIOCSWINSZ");
    }

    fn wait(&mut self) -> ExitStatus {
        wait_with_deadline(&mut self.child, "ssh to end", PATIENCE)
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn shell_terminal(master: &TestMaster, key: &TestKey, user: &str, command: &str) -> Terminal {
    let mut ssh = master.ssh_command(key, user, &["-tt"]);
    ssh.arg(command);
    Terminal::open(ssh, 24, 80)
}

fn workdir(slave: &crate::harness::TestSlave, dir: &str) -> PathBuf {
    slave.dir.join("build").join(dir)
}

/// A pid the shell printed as `PID=N` (the last one shown).
fn pid_in(shown: &str) -> i32 {
    shown
        .rsplit("PID=")
        .next()
        .and_then(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no PID= in {shown:?}"))
}

#[test]
fn a_terminal_in_a_held_build_has_its_directory_environment_size_and_exit_status() {
    let checkout = Checkout::new();
    let master = farm(&checkout, "10m");
    let slave = master.start_slave("s1");
    let build = force_and_wait(&master, 1);
    let held = workdir(&slave, "linux");
    assert_eq!(
        std::fs::read_to_string(held.join("ran.txt")).expect("the build's file is kept"),
        "1\n"
    );

    let mut terminal = shell_terminal(&master, &master.user_key, &current_user(), "shell linux 1");
    // `$(...)` so the echo of the typed line does not match.
    terminal.send("echo \"DIR=$(pwd) NUM=$BUILDBOT_BUILDNUMBER\"\n");
    let shown = terminal.expect(" NUM=1");
    assert!(
        shown.contains(&format!("DIR={}", held.display())),
        "the shell starts in the build's directory: {shown}"
    );
    terminal.send("echo \"SIZE=$(stty size)\"\n");
    terminal.expect("SIZE=24 80");
    terminal.resize(40, 100);
    // The resize travels user → master → slave PTY; the next line sees it.
    wait_until("the new size to reach the slave's PTY", || {
        terminal.send("echo \"SIZE=$(stty size)\"\n");
        std::thread::sleep(Duration::from_millis(200));
        terminal.text()[terminal.seen..].contains("SIZE=40 100")
    });
    terminal.expect("SIZE=40 100");
    // Ctrl-C is a key: it interrupts the foreground job, not the session.
    terminal.send("sleep 300\n");
    std::thread::sleep(Duration::from_millis(300));
    terminal.send("\x03");
    terminal.send("echo \"AFTER=$((40 + 2))\"\n");
    terminal.expect("AFTER=42");
    // A background process must not outlive the shell.
    // "E""ND": the echo of the typed line does not match.
    terminal.send("sleep 1000 & echo \"PID=$!\" \"E\"\"ND\"\n");
    let background = pid_in(&terminal.expect(" END"));
    assert!(process_running(background));
    terminal.send("exit 7\n");
    assert_eq!(terminal.wait().code(), Some(7), "{}", terminal.text());
    wait_until("the shell's background process to be killed", || {
        !process_running(background)
    });

    // Other commands on a terminal (raw mode) get CR LF line ends.
    let mut help = shell_terminal(&master, &master.user_key, &current_user(), "help");
    assert_eq!(help.wait().code(), Some(0));
    std::thread::sleep(Duration::from_millis(100));
    let shown = help.text();
    assert!(
        shown.contains("shell") && shown.contains("\r\n"),
        "{shown:?}"
    );
    assert!(
        !shown.replace("\r\n", "").contains('\n'),
        "a bare LF: {shown:?}"
    );

    // Without a terminal: one command, its output and its status.
    let once = master.ssh(
        &master.user_key,
        &current_user(),
        "shell linux 1 -- 'echo \"B=$BUILDBOT_BUILDER\"; cat ran.txt; echo oops >&2; exit 5'",
    );
    assert_eq!(once.status.code(), Some(5), "{}", text(&once.stderr));
    assert_eq!(text(&once.stdout), "B=linux\n1\n");
    assert_eq!(text(&once.stderr), "oops\n");

    // A command's stdin is the user's, and its EOF arrives.
    let fed = master.ssh_with(
        &master.user_key,
        &current_user(),
        "shell linux 1 -- wc -c",
        &[],
        Some(&vec![b'x'; 3 * 1024 * 1024]),
    );
    assert_eq!(fed.status.code(), Some(0), "{}", text(&fed.stderr));
    assert_eq!(text(&fed.stdout).trim(), (3 * 1024 * 1024).to_string());

    // Every session is in the build's record: who, and when it ended.
    let detail = master.api(&format!("/api/builds/{}", build["id"]));
    let shell = &detail["shell"];
    assert_eq!(shell["held"], true, "{detail}");
    let sessions = shell["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 3, "{detail}");
    assert!(
        sessions
            .iter()
            .all(|session| session["who"] == current_user().as_str()
                && session["ended_at"].is_number()),
        "{detail}"
    );
}

#[test]
fn only_the_requester_may_and_a_held_directory_is_reused_only_after_its_hold() {
    let why = "only_the_requester_may_and_a_held_directory_is_reused_only_after_its_hold";
    let checkout = Checkout::new();
    let master = farm(&checkout, "3s");
    let slave = master.start_slave("s1");
    let first = force_and_wait(&master, 1);

    // Someone else is refused with one line.
    let stranger = TempAccount::create(why);
    let key = TestKey::ed25519(master.keys_dir.path(), "stranger");
    master.authorize(&stranger.user, &key.public_line);
    let refused = master.ssh(&key, &stranger.user, "shell linux 1 -- true");
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    let line = text(&refused.stderr);
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(line.contains("may not open a shell"), "{line}");
    let released = master.ssh(&key, &stranger.user, "shell linux 1 --release");
    assert_eq!(
        released.status.code(),
        Some(1),
        "{}",
        text(&released.stderr)
    );

    // While #1 is held, #2 builds elsewhere and #1's directory stays as #1 left it.
    force_and_wait(&master, 2);
    assert_eq!(
        std::fs::read_to_string(workdir(&slave, "linux").join("ran.txt")).expect("kept"),
        "1\n"
    );
    assert_eq!(
        std::fs::read_to_string(workdir(&slave, "linux~2").join("ran.txt")).expect("built"),
        "2\n"
    );

    // The hold runs out: no shell any more, and the directory serves builds again.
    // (Watched through the API: connecting would extend it.)
    wait_until("the hold of linux #1 to end", || {
        master.api(&format!("/api/builds/{}", first["id"]))["shell"]["held"] == false
    });
    let late = master.ssh(&master.user_key, &current_user(), "shell linux 1 -- true");
    assert_eq!(late.status.code(), Some(1), "{}", text(&late.stderr));
    assert!(
        text(&late.stderr).contains("was held until"),
        "{}",
        text(&late.stderr)
    );
    // #2 still holds linux~2; its owner releases it.
    let released = master.ssh(&master.user_key, &current_user(), "shell linux 2 --release");
    assert_eq!(
        released.status.code(),
        Some(0),
        "{}",
        text(&released.stderr)
    );
    std::thread::sleep(Duration::from_secs(11)); // DIR_GRACE: shells of an ended hold are gone
    force_and_wait(&master, 3);
    assert_eq!(
        std::fs::read_to_string(workdir(&slave, "linux").join("ran.txt")).expect("rebuilt"),
        "3\n"
    );
    // No hold or build uses linux~2 any more: the build in linux removed it.
    assert!(
        !workdir(&slave, "linux~2").exists(),
        "linux~2 is left behind"
    );
}

#[test]
fn killing_the_slave_ends_the_shell_with_a_message_and_nothing_of_it_survives() {
    let checkout = Checkout::new();
    let master = farm(&checkout, "10m");
    let slave = master.start_slave("s1");
    force_and_wait(&master, 1);

    let mut terminal = shell_terminal(&master, &master.user_key, &current_user(), "shell linux 1");
    terminal.send("sleep 1000 & echo \"PID=$!\"; echo \"READY=$((1 + 1))\"\n");
    let shown = terminal.expect("READY=2");
    let background = pid_in(&shown);
    assert!(process_running(background));
    slave.signal(nix::sys::signal::Signal::SIGKILL);
    let status = terminal.wait();
    assert_eq!(status.code(), Some(255), "{}", terminal.text());
    let all = terminal.text();
    assert!(
        all.contains("the connection to slave s1 ended; the shell is gone"),
        "{all}"
    );
    // As with a step's processes: a slave killed outright cannot kill what it started; its
    // next start does, before it takes any work.
    drop(slave);
    let _slave = master.start_slave("s1");
    wait_until("the shell's processes to be gone", || {
        !process_running(background)
    });
}

#[test]
fn a_passing_build_is_held_only_when_asked_and_the_client_opens_its_shell() {
    let checkout = Checkout::new();
    let master = farm_with(&checkout, "10m", "echo passed > ran.txt");
    let _slave = master.start_slave("s1");
    assert_eq!(force_and_wait_with(&master, 1, "")["result"], "success");
    let not_held = master.ssh(&master.user_key, &current_user(), "shell linux 1 -- true");
    assert_eq!(
        not_held.status.code(),
        Some(1),
        "{}",
        text(&not_held.stderr)
    );
    assert!(
        text(&not_held.stderr).contains("linux #1 is not held"),
        "{}",
        text(&not_held.stderr)
    );

    assert_eq!(
        force_and_wait_with(&master, 2, " --hold")["result"],
        "success"
    );
    // `buildbot shell` with the usual connection flags; its exit status is the command's.
    let mut client = Command::new(crate::harness::BIN);
    client
        .arg("shell")
        .args(master.client_args())
        .args(["linux", "2", "--", "cat ran.txt; exit 4"])
        .stdin(Stdio::null());
    let ran = crate::harness::run_with_timeout(client, None);
    assert_eq!(ran.status.code(), Some(4), "{}", text(&ran.stderr));
    assert_eq!(text(&ran.stdout), "passed\n");
    let mut release = Command::new(crate::harness::BIN);
    release
        .arg("shell")
        .args(master.client_args())
        .args(["linux", "2", "--release"]);
    let released = crate::harness::run_with_timeout(release, None);
    assert_eq!(
        released.status.code(),
        Some(0),
        "{}",
        text(&released.stderr)
    );
    let after = master.ssh(&master.user_key, &current_user(), "shell linux 2 -- true");
    assert_eq!(after.status.code(), Some(1), "{}", text(&after.stderr));
}

#[test]
fn megabytes_pass_both_ways_through_the_window_of_acknowledgements() {
    let checkout = Checkout::new();
    let master = farm(&checkout, "10m");
    let _slave = master.start_slave("s1");
    force_and_wait(&master, 1);

    // Each way several times the window (1 MiB), acknowledged in batches: neither side may
    // stop for an acknowledgement that never comes.
    let input = vec![b'k'; 3_000_000];
    let ran = master.ssh_with(
        &master.user_key,
        &current_user(),
        "shell linux 1 -- 'wc -c; head -c 5000000 /dev/zero'",
        &[],
        Some(&input),
    );
    assert_eq!(ran.status.code(), Some(0), "{}", text(&ran.stderr));
    let (count, zeros) = ran.stdout.split_at(
        ran.stdout
            .iter()
            .position(|&b| b == b'\n')
            .map_or(0, |at| at + 1),
    );
    assert_eq!(String::from_utf8_lossy(count).trim(), "3000000");
    assert_eq!(zeros.len(), 5_000_000);
    assert!(zeros.iter().all(|&b| b == 0));
}

#[test]
fn releasing_the_hold_ends_an_open_shell_at_once() {
    let checkout = Checkout::new();
    let master = farm(&checkout, "10m");
    let _slave = master.start_slave("s1");
    let build = force_and_wait(&master, 1);
    let mut terminal = shell_terminal(&master, &master.user_key, &current_user(), "shell linux 1");
    terminal.send("echo \"UP=$((20 + 1))\"\n");
    terminal.expect("UP=21");

    let released = master.ssh(&master.user_key, &current_user(), "shell linux 1 --release");
    assert_eq!(
        released.status.code(),
        Some(0),
        "{}",
        text(&released.stderr)
    );
    // Ten minutes of hold were left: the shell ends now, not then, and says who ended it.
    terminal.expect(&format!(
        "{} released the hold of linux #1; the shell is closed",
        current_user()
    ));
    assert_eq!(terminal.wait().code(), Some(255), "{}", terminal.text());
    let detail = master.api(&format!("/api/builds/{}", build["id"]));
    let sessions = detail["shell"]["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 1, "{detail}");
    assert!(sessions[0]["ended_at"].is_number(), "{detail}");
}
