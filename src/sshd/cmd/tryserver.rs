//! `[BINARY] tryserver --jobdir DIR`: the classic Buildbot ssh try path, a job on stdin into
//! the spool.

use crate::exec_io::ExecIo;
use crate::sshd::SshdContext;
use crate::unix::accounts::UnixAccount;

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Tryserver {
    #[arg(long, value_name = "DIR", value_parser = jobdir)]
    pub jobdir: String,
}

fn jobdir(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("--jobdir DIR is required".to_string());
    }
    Ok(value.to_string())
}

impl Tryserver {
    pub async fn apply(self, ctx: &SshdContext, user: &UnixAccount, io: &mut ExecIo<'_>) -> u32 {
        match ctx
            .control
            .submit_try(user, Some(&self.jobdir), io.stdin)
            .await
        {
            Ok(accepted) => {
                io.say(&super::try_::accepted_line(&accepted)).await;
                0
            }
            Err(err) => super::refuse(&err, io).await,
        }
    }
}
