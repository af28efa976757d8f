//! Automatic bisection (issue 28): which commit between a builder's last good build and its
//! first bad one broke it. [`plan`] is the search itself, pure: given the commits and the
//! outcomes so far it says what to build next, or names the culprit.
//!
//! Not wired to the scheduler yet: the requests at the lowest priority on idle slaves, the
//! store's `bisect_…` table, `/api/bisects` and the `bisect_started` / `culprit_found` events
//! are the next steps (see docs/notify.md).

pub mod plan;
