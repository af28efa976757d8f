//! Who hears about what: each channel starts with `[irc] notify`, each user (in private) with
//! nothing, and `notify on|off EVENT...` changes that for the channel or user it is said in.
//! [`classes_of`] says which notify events a finished build is (pure).

use std::collections::{BTreeMap, BTreeSet};

use crate::master::config::NotifyEvent;
use crate::master::irc_links::fold_nick;
use crate::status::BuildResult;

/// Which notify events a build that ended with `result` is, given the result of the builder's
/// build before it.
pub fn classes_of(result: BuildResult, previous: Option<BuildResult>) -> BTreeSet<NotifyEvent> {
    let mut classes = BTreeSet::from([NotifyEvent::Finished]);
    let good = |result: BuildResult| matches!(result, BuildResult::Success | BuildResult::Warnings);
    match result {
        BuildResult::Success | BuildResult::Warnings => classes.insert(NotifyEvent::Success),
        BuildResult::Failure => classes.insert(NotifyEvent::Failure),
        BuildResult::Exception => classes.insert(NotifyEvent::Exception),
        BuildResult::Interrupted => classes.insert(NotifyEvent::Interrupted),
    };
    match previous {
        Some(BuildResult::Failure) if good(result) => {
            classes.insert(NotifyEvent::Fixed);
        }
        Some(previous) if good(previous) && result == BuildResult::Failure => {
            classes.insert(NotifyEvent::Broken);
        }
        _ => {}
    }
    classes
}

/// The word a finished build's line carries for a transition, if any.
pub fn transition(classes: &BTreeSet<NotifyEvent>) -> Option<&'static str> {
    if classes.contains(&NotifyEvent::Fixed) {
        Some("fixed")
    } else if classes.contains(&NotifyEvent::Broken) {
        Some("broken")
    } else {
        None
    }
}

/// The notify settings of every channel and user, keyed by target in IRC lower case.
pub struct Subscriptions {
    defaults: BTreeSet<NotifyEvent>,
    channels: Vec<String>,
    /// Targets that said `notify`: original spelling and their set.
    set: BTreeMap<String, (String, BTreeSet<NotifyEvent>)>,
}

fn is_channel(target: &str) -> bool {
    target.starts_with(['#', '&'])
}

impl Subscriptions {
    pub fn new(channels: &[String], defaults: &[NotifyEvent]) -> Subscriptions {
        Subscriptions {
            defaults: defaults.iter().copied().collect(),
            channels: channels.to_vec(),
            set: BTreeMap::new(),
        }
    }

    /// What `target` hears about now.
    pub fn of(&self, target: &str) -> BTreeSet<NotifyEvent> {
        match self.set.get(&fold_nick(target)) {
            Some((_, events)) => events.clone(),
            None if is_channel(target) => self.defaults.clone(),
            None => BTreeSet::new(),
        }
    }

    pub fn change(&mut self, target: &str, on: bool, events: &[NotifyEvent]) {
        let mut current = self.of(target);
        for event in events {
            if on {
                current.insert(*event);
            } else {
                current.remove(event);
            }
        }
        self.set
            .insert(fold_nick(target), (target.to_string(), current));
    }

    /// Every target that hears about at least one of `classes`, in a stable order.
    pub fn targets_for(&self, classes: &BTreeSet<NotifyEvent>) -> Vec<String> {
        let mut targets: Vec<String> = Vec::new();
        let mut seen = BTreeSet::new();
        let configured = self.channels.iter().map(|channel| channel.as_str());
        let changed = self.set.values().map(|(name, _)| name.as_str());
        for target in configured.chain(changed) {
            if seen.insert(fold_nick(target))
                && self.of(target).iter().any(|event| classes.contains(event))
            {
                targets.push(target.to_string());
            }
        }
        targets
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BuildResult::*;

    #[test]
    fn fixed_and_broken_are_transitions() {
        assert!(classes_of(Success, Some(Failure)).contains(&NotifyEvent::Fixed));
        assert!(classes_of(Failure, Some(Success)).contains(&NotifyEvent::Broken));
        assert!(classes_of(Failure, Some(Warnings)).contains(&NotifyEvent::Broken));
        assert!(!classes_of(Failure, Some(Failure)).contains(&NotifyEvent::Broken));
        assert!(!classes_of(Success, None).contains(&NotifyEvent::Fixed));
        assert!(!classes_of(Success, Some(Exception)).contains(&NotifyEvent::Fixed));
        assert_eq!(
            classes_of(Interrupted, Some(Success)),
            BTreeSet::from([NotifyEvent::Finished, NotifyEvent::Interrupted])
        );
    }

    #[test]
    fn channels_start_with_the_defaults_users_with_nothing() {
        let mut subscriptions = Subscriptions::new(&["#ci".to_string()], &[NotifyEvent::Failure]);
        let failure = classes_of(Failure, None);
        assert_eq!(subscriptions.targets_for(&failure), ["#ci"]);
        subscriptions.change("Alice", true, &[NotifyEvent::Failure]);
        subscriptions.change("#CI", false, &[NotifyEvent::Failure]);
        assert_eq!(subscriptions.targets_for(&failure), ["Alice"]);
        assert!(subscriptions.of("#ci").is_empty());
        assert!(subscriptions.of("bob").is_empty());
    }
}
