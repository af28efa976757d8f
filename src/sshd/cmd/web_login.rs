//! `web-login`: a one-time URL that logs a browser into the web page as this user.

use crate::exec_io::ExecIo;
use crate::master::sessions::LOGIN_TOKEN_LIFETIME;
use crate::sshd::SshdContext;
use crate::unix::accounts::UnixAccount;

pub async fn apply(ctx: &SshdContext, user: &UnixAccount, io: &mut ExecIo<'_>) -> u32 {
    let url = ctx.control.web_login(user);
    io.print(&format!(
        "{url}\n(open it within {} s; it works once)\n",
        LOGIN_TOKEN_LIFETIME.as_secs()
    ))
    .await;
    0
}
