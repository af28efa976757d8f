//! "Did you mean" for `master.toml`: the nearest known key of a misspelt key, and the nearest
//! name for a builder, slave, lock or kind that does not exist. The known keys come from the
//! `Raw*` structs themselves (serde hands a struct's field names to its deserializer), so they
//! cannot drift from what the file may hold; this module only maps a place in the file to its
//! struct.

use serde::Deserialize;
use serde::de::{self, Visitor};

use super::locks::{RawLock, RawLockUse};
use super::schedulers::{RawChangeSource, RawChanges, RawScheduler};
use super::{
    RawBuilder, RawConfig, RawHttp, RawMaster, RawSlave, RawSpool, RawSshd, RawStep, irc::RawIrc,
};

/// ` (did you mean `NAME`?)` when one of `candidates` is near `word`, else nothing.
pub(super) fn hint<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    nearest(word, candidates).map_or_else(String::new, |name| format!(" (did you mean `{name}`?)"))
}

/// The candidate nearest to `word`, when it is near enough to be a slip: the same but for case,
/// or an edit distance (with transpositions) of at most a third of the word (at least 1), and
/// at most half of it (so `y` is no slip for `x`).
pub(super) fn nearest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let allowed = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .filter(|candidate| *candidate != word)
        .map(|candidate| {
            let distance = if candidate.eq_ignore_ascii_case(word) {
                0
            } else {
                strsim::damerau_levenshtein(word, candidate)
            };
            (distance, candidate)
        })
        .filter(|(distance, _)| *distance <= allowed && distance * 2 <= word.chars().count())
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// The keys a table at `place` may hold (`place`: the table names from the root, array indexes
/// left out, e.g. `["builder", "steps"]`). Empty for a place this module does not map.
pub(super) fn known_keys(place: &[&str]) -> &'static [&'static str] {
    match place {
        [] => fields::<RawConfig>(),
        ["master"] => fields::<RawMaster>(),
        ["sshd"] => fields::<RawSshd>(),
        ["http"] => fields::<RawHttp>(),
        ["spool"] => fields::<RawSpool>(),
        ["slave"] => fields::<RawSlave>(),
        ["builder"] => fields::<RawBuilder>(),
        ["builder", "steps"] => fields::<RawStep>(),
        ["builder", "locks"] | ["builder", "steps", "locks"] => fields::<RawLockUse>(),
        ["scheduler"] => fields::<RawScheduler>(),
        ["change_source"] => fields::<RawChangeSource>(),
        ["lock"] => fields::<RawLock>(),
        ["changes"] => fields::<RawChanges>(),
        ["irc"] => fields::<RawIrc>(),
        _ => &[],
    }
}

/// The field names serde gives `T`'s deserializer (`deserialize_struct`'s `fields`).
fn fields<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    let mut probe = FieldsProbe(None);
    let _ = T::deserialize(&mut probe);
    probe.0.unwrap_or(&[])
}

/// A deserializer that only records the field names of the struct asked for, then fails.
struct FieldsProbe(Option<&'static [&'static str]>);

#[derive(Debug)]
struct Probed;

impl std::fmt::Display for Probed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("probed")
    }
}

impl std::error::Error for Probed {}

impl de::Error for Probed {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Probed
    }
}

impl<'de> de::Deserializer<'de> for &mut FieldsProbe {
    type Error = Probed;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Probed> {
        Err(Probed)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Probed> {
        self.0 = Some(fields);
        Err(Probed)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slips_are_matched_and_strangers_are_not() {
        let names = ["linux", "windows", "docs"];
        assert_eq!(nearest("linx", names), Some("linux"));
        assert_eq!(nearest("Linux", names), Some("linux"));
        assert_eq!(nearest("widnows", names), Some("windows"));
        assert_eq!(nearest("mac", names), None);
        assert_eq!(nearest("linux", names), None, "itself is no suggestion");
        assert_eq!(hint("dcos", names), " (did you mean `docs`?)");
        assert_eq!(hint("zzz", names), "");
        assert_eq!(nearest("y", ["x"]), None);
        assert_eq!(nearest("s2", ["s1"]), Some("s1"));
    }

    #[test]
    fn the_known_keys_come_from_the_raw_structs() {
        assert!(
            known_keys(&[]).contains(&"builder"),
            "{:?}",
            known_keys(&[])
        );
        assert!(known_keys(&["builder"]).contains(&"steps"));
        assert!(known_keys(&["builder", "steps"]).contains(&"command"));
        assert!(known_keys(&["sshd"]).contains(&"listen"));
        assert!(known_keys(&["irc"]).contains(&"channels"));
        assert!(known_keys(&["nowhere"]).is_empty());
    }
}
