//! What to do with what a peer or a user sends, before it goes anywhere else: text made safe
//! for a line-based protocol or a log (`text`), and the unit by which a listener counts a
//! source's share (`source`). Bottom layer: pure, and shared by every front end and the
//! outputs still to come (mail, webhooks).

pub mod source;
pub mod text;
