//! `help [COMMAND]`: the commands this master understands, or one command's arguments, from
//! the same clap definition the commands are parsed with.

use clap::CommandFactory;

use crate::commands::EXIT_USAGE;
use crate::exec_io::ExecIo;

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Help {
    /// The command to explain.
    pub command: Option<String>,
}

impl Help {
    pub async fn apply(self, io: &mut ExecIo<'_>) -> u32 {
        match self.command {
            None => {
                io.print(&list()).await;
                0
            }
            Some(name) => match usage(&name) {
                Some(text) => {
                    io.print(&text).await;
                    0
                }
                None => {
                    io.say(&format!(
                        "buildbot: unknown command '{name}' (`help` lists the commands)"
                    ))
                    .await;
                    EXIT_USAGE.into()
                }
            },
        }
    }
}

/// One line per command: its name and what it does.
pub fn list() -> String {
    let top = super::Command::command();
    let mut out =
        String::from("commands (ssh MASTER COMMAND ...; `help COMMAND` for its arguments):\n");
    for command in top.get_subcommands() {
        let about = command
            .get_about()
            .map(ToString::to_string)
            .unwrap_or_default();
        out.push_str(&format!("  {:<14} {about}\n", command.get_name()));
    }
    out
}

/// One command's usage and arguments.
pub fn usage(name: &str) -> Option<String> {
    let mut top = super::Command::command();
    let command = top.find_subcommand_mut(name)?;
    let mut command = command
        .clone()
        .bin_name(format!("ssh MASTER {name}"))
        .disable_help_flag(true);
    Some(command.render_help().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lists_every_command_and_explains_one() {
        let listed = list();
        for name in [
            "try",
            "watch",
            "stop",
            "force",
            "rebuild",
            "cancel",
            "sendchange",
            "help",
        ] {
            assert!(
                listed
                    .lines()
                    .any(|line| line.trim_start().starts_with(name)),
                "{name} missing from:\n{listed}"
            );
        }
        let force = usage("force").expect("force is a command");
        assert!(force.contains("--reason"), "{force}");
        assert!(force.contains("--json"), "{force}");
        assert!(force.contains("--wait"), "{force}");
        assert_eq!(usage("rm"), None);
    }
}
