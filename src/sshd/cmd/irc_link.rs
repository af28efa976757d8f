//! `irc-link`: a one-time code to say to the bot, which binds the nick to this user;
//! `irc-link --list`: who is linked.

use crate::exec_io::ExecIo;
use crate::sshd::SshdContext;
use crate::status::unix_now;
use crate::unix::accounts::UnixAccount;

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct IrcLink {
    #[arg(long)]
    pub list: bool,
}

impl IrcLink {
    pub async fn apply(self, ctx: &SshdContext, user: &UnixAccount, io: &mut ExecIo<'_>) -> u32 {
        let config = ctx.control.config();
        let Some(irc) = &config.irc else {
            io.say("buildbot: this master has no IRC bot (no [irc] section in master.toml)")
                .await;
            return 1;
        };
        let links = ctx.control.irc_links();
        if self.list {
            let now = unix_now();
            let mut out = String::new();
            for binding in links.list() {
                out.push_str(&format!(
                    "{} -> {} (linked {} ago, ends in {})\n",
                    binding.nick,
                    binding.account.name,
                    crate::durations::format_eta(std::time::Duration::from_secs_f64(
                        (now - binding.since).max(0.0)
                    )),
                    crate::durations::format_eta(binding.expires_in)
                ));
            }
            if out.is_empty() {
                out.push_str("no IRC nicks are linked\n");
            }
            io.print(&out).await;
            return 0;
        }
        let code = links.new_code(user.clone()).await;
        tracing::info!(user = %user.name, "IRC link code issued");
        io.print(&format!(
            "{code}\nsay on IRC, within {} minutes: /msg {} link {code}\n(the link lasts {} at most, and ends when that nick quits or changes nick)\n",
            crate::master::irc_links::LINK_CODE_LIFETIME.as_secs() / 60,
            irc.nick,
            crate::durations::format_eta(links.ttl()),
        ))
        .await;
        0
    }
}
