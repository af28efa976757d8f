//! `pause-slave NAME` / `unpause-slave NAME`: a paused slave finishes its builds and takes no
//! new ones.

use crate::exec_io::ExecIo;
use crate::sshd::SshdContext;
use crate::unix::accounts::UnixAccount;

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct PauseSlave {
    pub name: String,
}

impl PauseSlave {
    pub async fn apply(
        self,
        ctx: &SshdContext,
        user: &UnixAccount,
        paused: bool,
        io: &mut ExecIo<'_>,
    ) -> u32 {
        if let Err(err) = ctx.control.pause_slave(user, &self.name, paused).await {
            return super::refuse(&err, io).await;
        }
        let what = if paused {
            "paused: it finishes its builds and takes no new ones"
        } else {
            "unpaused"
        };
        io.print(&format!("slave {} {what}\n", self.name)).await;
        0
    }
}
