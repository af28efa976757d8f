//! `fetch BUILDER N PATH`: an artifact of a build on stdout (`ssh master fetch linux 7
//! target/release/app > app`), streamed a chunk at a time. Who may fetch is who may read the
//! build's logs: any account that logged in.

use futures_util::StreamExt as _;
use tokio::io::AsyncWriteExt as _;

use crate::exec_io::ExecIo;
use crate::sshd::SshdContext;

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Fetch {
    pub builder: String,
    #[arg(value_parser = super::force::positive)]
    pub build: i64,
    /// The artifact's path as the build page lists it.
    pub path: String,
}

impl Fetch {
    pub async fn apply(self, ctx: &SshdContext, io: &mut ExecIo<'_>) -> u32 {
        let download = match ctx
            .control
            .artifact(&self.builder, self.build, &self.path)
            .await
        {
            Ok(download) => download,
            Err(err) => return super::refuse(&err, io).await,
        };
        let size = download.row.size;
        let mut bytes = std::pin::pin!(download.read(0, size));
        while let Some(piece) = bytes.next().await {
            let piece = match piece {
                Ok(piece) => piece,
                Err(err) => {
                    tracing::error!(builder = %self.builder, build = self.build, path = %self.path, "cannot read an artifact: {err}");
                    io.say("buildbot: internal error (logged on the master)")
                        .await;
                    return 1;
                }
            };
            if io.stdout.write_all(&piece).await.is_err() {
                // The client went away: nothing to tell it.
                return 1;
            }
        }
        let _ = io.stdout.flush().await;
        0
    }
}
