//! The slave daemon: SSH client, reconnects, command runner, checkout and patch.
//! (Arrives with the slaves-and-builds issue; nothing here yet.)
