//! The `buildbot` command: parses arguments, sets up logging, and calls into the library.
//!
//! Exit codes: 0 success; 1 an error (one line on stderr saying what to do, or one line per
//! problem for `checkconfig`); 2 a usage error (bad arguments).

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use buildbot::cli::{Cli, Command};
use buildbot::client::try_cmd::{self, TryArgs};
use buildbot::daemon;
use buildbot::master::config::Config;
use buildbot::status::text::count;

/// A client command's result as an exit code; its error is one line on stderr.
fn client_outcome(command: &str, result: Result<u8, try_cmd::TryError>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("buildbot {command}: {err}");
            ExitCode::from(try_cmd::EXIT_TROUBLE)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo's output is for a person reading along: its master's and slave's INFO lines
    // would bury it, so it logs warnings only (RUST_LOG still decides when set); so does
    // migrate-db, whose own lines say what it did.
    let default_level = match cli.command {
        Command::Demo | Command::MigrateDb { .. } => "warn",
        _ => "info",
    };
    init_tracing(default_level);
    buildbot::choose_tls_provider();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("buildbot: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn init_tracing(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // tokio_postgres logs statements with their parameters at debug: patches and session
    // hashes have no place in a log, whatever RUST_LOG asks.
    let filter = match "tokio_postgres=warn".parse() {
        Ok(cap) => filter.add_directive(cap),
        Err(_) => filter,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::CreateMaster {
            dir,
            name,
            ssh_listen,
            http_listen,
            force,
            try_group,
        } => {
            let created = daemon::create::create_master(&daemon::create::CreateMaster {
                dir: dir.clone(),
                name,
                ssh_listen,
                http_listen,
                force,
                try_group,
            })?;
            println!("created master in {}", dir.display());
            println!("config: {}", created.config.display());
            println!("host key: {}", created.host_key_fingerprint);
            println!(
                "next: edit the config, then run: buildbot master {}",
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Master { dir } => {
            until_signal(|shutdown| async move {
                daemon::run(&dir, shutdown, |listening| {
                    // Whoever reads stdout may stop reading once it has the addresses; the
                    // master carries on.
                    use std::io::Write;
                    let mut stdout = std::io::stdout().lock();
                    let _ = writeln!(stdout, "{listening}");
                    let _ = write!(stdout, "{}", listening.first_contact());
                    let _ = stdout.flush();
                })
                .await
            })
        }
        Command::CreateSlave {
            dir,
            master,
            name,
            master_host_key,
            force,
        } => {
            let snippet = buildbot::slave::create_slave(
                &dir,
                &master,
                &name,
                master_host_key.as_deref(),
                force,
            )?;
            println!("created slave {name} in {}", dir.display());
            println!(
                "add this to the master's master.toml (and name the slave in a builder's slaves):\n"
            );
            print!("{snippet}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Slave { dir } => {
            let config = buildbot::slave::SlaveConfig::load(&dir)?;
            until_signal(|shutdown| buildbot::slave::run(config, shutdown))
        }
        Command::Demo => until_signal(buildbot::demo::run),
        Command::Try(args) => {
            let cwd = std::env::current_dir().context("cannot find the current directory")?;
            let args = TryArgs {
                builders: args.builders,
                wait: args.wait,
                tail: args.tail,
                diff: args.diff,
                patchlevel: args.patchlevel,
                branch: args.branch,
                baserev: args.baserev,
                dryrun: args.dryrun,
                verbose: args.verbose,
                properties: if args.hold {
                    let mut properties = args.properties;
                    properties.push("hold=1".to_string());
                    properties
                } else {
                    args.properties
                },
                include_untracked: args.include_untracked,
                who: args.who,
                comment: args.comment,
                ..args.connection.into_try_args()
            };
            Ok(client_outcome("try", try_cmd::run(&args, &cwd)))
        }
        Command::Watch {
            builders,
            once,
            json,
            connection,
        } => {
            let cwd = std::env::current_dir().context("cannot find the current directory")?;
            let connection = connection.into_try_args();
            let options = buildbot::client::watch::WatchOptions {
                builders,
                once,
                json,
            };
            let result = buildbot::client::watch::run(&options, &connection, &cwd);
            Ok(client_outcome("watch", result))
        }
        Command::Shell {
            builder,
            number,
            release,
            command,
            connection,
        } => {
            let cwd = std::env::current_dir().context("cannot find the current directory")?;
            let connection = connection.into_try_args();
            let result = buildbot::client::remote::shell(
                &builder,
                number,
                release,
                &command,
                &connection,
                &cwd,
            );
            Ok(client_outcome("shell", result))
        }
        Command::Stop {
            builder,
            number,
            reason,
            connection,
        } => {
            let cwd = std::env::current_dir().context("cannot find the current directory")?;
            let connection = connection.into_try_args();
            let reason = reason.join(" ");
            let result =
                buildbot::client::remote::stop(&builder, number, &reason, &connection, &cwd);
            Ok(client_outcome("stop", result))
        }
        Command::Land {
            onto,
            builders,
            wait,
            ff_only,
            cancel,
            connection,
        } => {
            let cwd = std::env::current_dir().context("cannot find the current directory")?;
            let args = buildbot::client::land::LandArgs {
                onto,
                builders,
                wait,
                ff_only,
                cancel,
            };
            let result = buildbot::client::land::run(&args, &connection.into_try_args(), &cwd);
            Ok(client_outcome("land", result))
        }
        Command::Fetch {
            builder,
            number,
            path,
            output,
            connection,
        } => {
            let cwd = std::env::current_dir().context("cannot find the current directory")?;
            let result = buildbot::client::remote::fetch(
                &builder,
                number,
                &path,
                output.as_deref(),
                &connection.into_try_args(),
                &cwd,
            );
            Ok(client_outcome("fetch", result))
        }
        Command::Force {
            force,
            wait,
            connection,
        } => {
            let cwd = std::env::current_dir().context("cannot find the current directory")?;
            let result =
                buildbot::client::remote::force(&force, wait, &connection.into_try_args(), &cwd);
            Ok(client_outcome("force", result))
        }
        Command::Sendchange {
            repository,
            branch,
            revision,
            who,
            comments,
            files,
            properties,
            connection,
        } => {
            let cwd = std::env::current_dir().context("cannot find the current directory")?;
            let parsed = match buildbot::client::remote::parse_properties(&properties) {
                Ok(parsed) => parsed,
                Err(err) => return Ok(client_outcome("sendchange", Err(err))),
            };
            let change = buildbot::change::ChangeSpec {
                repository,
                branch,
                revision,
                who,
                comments,
                files,
                properties: parsed,
            };
            let connection = connection.into_try_args();
            let result = buildbot::client::remote::send_change(&change, &connection, &cwd);
            Ok(client_outcome("sendchange", result))
        }
        Command::BenchSwarm {
            dir,
            count,
            master,
            master_host_key,
        } => {
            if let (Some(master), Some(host_key)) = (master, master_host_key) {
                print!(
                    "{}",
                    buildbot::slave::swarm::create(&dir, count, &master, &host_key)?
                );
                return Ok(ExitCode::SUCCESS);
            }
            until_signal(|shutdown| async move {
                buildbot::slave::swarm::run(&dir, count, shutdown).await
            })
        }
        Command::ApplyPatch { level, workdir } => {
            buildbot::slave::checkout::run_apply_patch_child(
                &workdir,
                level,
                &mut std::io::stdin().lock(),
                &mut std::io::stdout().lock(),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Tryserver { jobdir } => {
            let name = buildbot::spool::submit::tryserver_local(&jobdir, &mut std::io::stdin())?;
            eprintln!("buildbot: job accepted as {name}");
            Ok(ExitCode::SUCCESS)
        }
        Command::GenerateDocs { out } => {
            for path in buildbot::cli::generate_docs(&out)? {
                println!("{}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            buildbot::cli::print_completions(shell)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Reconfig { dir } => Ok(ExitCode::from(daemon::reconfig::command(&dir))),
        Command::MigrateDb { dir, to } => {
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(daemon::migrate_db::run(&dir, &to))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Checkconfig { dir } => match Config::load(&dir) {
            Ok(config) => {
                println!(
                    "{}: OK ({}, {})",
                    dir.join(buildbot::master::config::CONFIG_FILE).display(),
                    count(config.slaves.len(), "slave", "slaves"),
                    count(config.builders.len(), "builder", "builders")
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(err) => {
                for problem in &err.0 {
                    eprintln!("{problem}");
                }
                Ok(ExitCode::from(1))
            }
        },
    }
}

/// Runs a daemon-like command on a new runtime until it returns; SIGINT and SIGTERM cancel
/// the token it is given.
fn until_signal<F, Fut, E>(command: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    anyhow::Error: From<E>,
{
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        spawn_signal_handler(shutdown.clone())?;
        command(shutdown).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// SIGINT and SIGTERM cancel `shutdown`; everything else stops from there.
fn spawn_signal_handler(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
            _ = interrupt.recv() => tracing::info!("SIGINT: stopping"),
        }
        shutdown.cancel();
    });
    Ok(())
}
