//! `shell BUILDER N [--release] [-- CMD...]`: a terminal (or one command) in a held build's
//! directory on its slave, relayed over the slave's own connection (issue 25). The control
//! layer decides who may and records the session; this file only moves bytes: the user's
//! keystrokes and window size to the slave, the shell's output back, and its exit status.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::exec_io::ExecIo;
use crate::master::control::shell::{
    HOLD_CHECK_SLACK, INPUT_CHUNK, ShellAsk, ShellEnd, ShellPlace, clock,
};
use crate::master::slaves::ShellEvent;
use crate::proto::{StreamKind, TermSize};
use crate::sshd::SshdContext;
use crate::unix::accounts::UnixAccount;

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Shell {
    pub builder: String,
    /// The held build's number.
    #[arg(value_parser = super::force::positive)]
    pub build: i64,
    /// End the hold now instead: the directory is free for the next build.
    #[arg(long)]
    pub release: bool,
    /// Say where the shell opens instead, as one JSON object: `{"here": true}`, or the master
    /// of the cluster the build's slave is connected to (`buildbot shell` follows it).
    #[arg(long = "where", conflicts_with = "release")]
    pub place: bool,
    /// Run this command instead of an interactive shell.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// The exit status when the shell ended for another reason than its own exit.
const EXIT_CUT: u32 = 255;

impl Shell {
    pub async fn apply(
        self,
        ctx: &SshdContext,
        user: &UnixAccount,
        peer: std::net::SocketAddr,
        io: &mut ExecIo<'_>,
    ) -> u32 {
        if self.release {
            return match ctx
                .control
                .release_hold(user, &self.builder, self.build)
                .await
            {
                Ok(_) => {
                    io.print(&format!(
                        "{} #{}: released; its directory is free for the next build\n",
                        self.builder, self.build
                    ))
                    .await;
                    0
                }
                Err(err) => super::refuse(&err, io).await,
            };
        }
        if self.place {
            return match ctx
                .control
                .shell_place(user, &self.builder, self.build)
                .await
            {
                Ok(ShellPlace::Here) => {
                    io.print_json(&serde_json::json!({ "here": true })).await;
                    0
                }
                Ok(ShellPlace::Elsewhere(other)) => {
                    io.print_json(&serde_json::json!({
                        "here": false,
                        "master": other.master,
                        "host": other.host,
                        "port": other.port,
                        "host_key": other.host_key,
                    }))
                    .await;
                    0
                }
                Err(err) => super::refuse(&err, io).await,
            };
        }
        let mut terminal = io.terminal.take();
        let ask = ShellAsk {
            builder: self.builder.clone(),
            number: self.build,
            from: peer.ip().to_string(),
            command: (!self.command.is_empty()).then(|| self.command.join(" ")),
            pty: terminal.as_ref().map(|terminal| {
                (
                    terminal.term.clone(),
                    TermSize {
                        cols: terminal.cols,
                        rows: terminal.rows,
                    },
                )
            }),
        };
        let mut shell = match ctx.control.open_shell(user, ask).await {
            Ok(shell) => shell,
            Err(err) => return super::refuse(&err, io).await,
        };
        let slave = shell.hold().slave.clone();
        let mut release = shell.release_watch();
        // Made once, not on each keystroke.
        let released = release.released();
        tokio::pin!(released);
        let client_gone = io.client_gone.clone();
        let client_gone = client_gone.cancelled();
        tokio::pin!(client_gone);
        let mut input = vec![0u8; INPUT_CHUNK];
        let mut input_open = true;
        // The hold's end is checked when it comes; the timer is set anew only when the hold
        // moved, not on each keystroke.
        let mut checked_until = shell.hold().held_until;
        let hold_check = tokio::time::sleep(until_hold_check(checked_until));
        tokio::pin!(hold_check);
        let end = loop {
            if shell.hold().held_until != checked_until {
                checked_until = shell.hold().held_until;
                hold_check
                    .as_mut()
                    .reset(tokio::time::Instant::now() + until_hold_check(checked_until));
            }
            let resize = async {
                match terminal.as_mut() {
                    Some(terminal) => terminal.resizes.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = shell.next() => match event {
                    Some(ShellEvent::Output { stream, data }) => {
                        let written = match stream {
                            StreamKind::Stderr => io.stderr.write_all(&data).await,
                            _ => io.stdout.write_all(&data).await,
                        };
                        let flushed = match stream {
                            StreamKind::Stderr => io.stderr.flush().await,
                            _ => io.stdout.flush().await,
                        };
                        if written.is_err() || flushed.is_err() {
                            break ShellEnd::Ended("the user's connection ended".into());
                        }
                        shell.delivered(data.len()).await;
                    }
                    Some(ShellEvent::Exit { exit_code, signal, error }) => {
                        if let Some(error) = error {
                            io.say(&format!("buildbot: shell on slave {slave}: {error}")).await;
                            break ShellEnd::Ended(error);
                        }
                        let status = match (exit_code, signal) {
                            (Some(code), _) => u32::try_from(code).unwrap_or(EXIT_CUT),
                            (None, Some(signal)) => 128 + u32::try_from(signal).unwrap_or(0),
                            (None, None) => EXIT_CUT,
                        };
                        break ShellEnd::Exited(status);
                    }
                    Some(ShellEvent::Ack(_)) => {}
                    None => {
                        let reason = format!("the connection to slave {slave} ended");
                        io.say(&format!("\r\nbuildbot: {reason}; the shell is gone")).await;
                        break ShellEnd::Ended(reason);
                    }
                },
                read = io.stdin.read(&mut input), if input_open && shell.takes_input() => match read {
                    Ok(0) | Err(_) => {
                        input_open = false;
                        shell.eof().await;
                    }
                    Ok(read) => shell.input(&input[..read]).await,
                },
                Some((cols, rows)) = resize => shell.resize(TermSize { cols, rows }).await,
                reason = &mut released => {
                    io.say(&format!("\r\nbuildbot: {reason}; the shell is closed")).await;
                    break ShellEnd::Ended(reason);
                }
                () = &mut client_gone => {
                    break ShellEnd::Ended("the user logged out".into());
                }
                () = &mut hold_check => {
                    let until = shell.held_until().await;
                    if until <= crate::status::unix_now() {
                        let reason = format!("the hold of {} #{} ended at {}", self.builder, self.build, clock(until));
                        io.say(&format!("\r\nbuildbot: {reason}; the shell is closed")).await;
                        break ShellEnd::Ended(reason);
                    }
                    checked_until = until;
                    hold_check
                        .as_mut()
                        .reset(tokio::time::Instant::now() + until_hold_check(until));
                }
            }
        };
        shell.finish(&end).await;
        match end {
            ShellEnd::Exited(status) => status,
            ShellEnd::Ended(_) => EXIT_CUT,
        }
    }
}

/// How long from now until the relay looks at a hold ending at `until` (unix time).
fn until_hold_check(until: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64((until - crate::status::unix_now()).max(0.0))
        + HOLD_CHECK_SLACK
}
