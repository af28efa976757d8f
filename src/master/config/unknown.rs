//! Unknown keys in `master.toml`: the typed pass (serde, through `serde_ignored`) names the path
//! of every key no `Raw*` struct takes, and this module finds that key's line in the parsed
//! document, so `checkconfig` reports every typo at once instead of stopping at the first.
//! It does not decide which keys are known: the `Raw*` structs do.

use toml::de::{DeTable, DeValue};

use super::{LineIndex, Problem};

/// One step of the path to a key: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Segment {
    Key(String),
    Index(usize),
}

/// `toml::Spanned` reads its value through a private struct with these field names; they are
/// not keys of the file.
const SPANNED_PRIVATE: &str = "$__serde_spanned_private_";

/// The path serde_ignored reports, root first, without the steps that are not in the file
/// (options, newtypes, `Spanned`'s wrapper).
pub(super) fn segments(path: &serde_ignored::Path<'_>) -> Vec<Segment> {
    let mut reversed = Vec::new();
    let mut current = path;
    loop {
        match current {
            serde_ignored::Path::Root => break,
            serde_ignored::Path::Seq { parent, index } => {
                reversed.push(Segment::Index(*index));
                current = parent;
            }
            serde_ignored::Path::Map { parent, key } => {
                if !key.starts_with(SPANNED_PRIVATE) {
                    reversed.push(Segment::Key(key.clone()));
                }
                current = parent;
            }
            serde_ignored::Path::Some { parent }
            | serde_ignored::Path::NewtypeStruct { parent }
            | serde_ignored::Path::NewtypeVariant { parent } => current = parent,
        }
    }
    reversed.reverse();
    reversed
}

/// The problem for the unknown key at `segments`: its line, and where it is, as a person would
/// name it (`[sshd]`, `[[builder]] 2`, `steps 1 of [[builder]] 1`).
pub(super) fn problem(document: &DeTable<'_>, segments: &[Segment], lines: &LineIndex) -> Problem {
    let Some((Segment::Key(key), parents)) = segments.split_last() else {
        return Problem {
            line: 0,
            message: "unknown field".to_string(),
        };
    };
    let line = key_start(document, segments).map_or(0, |offset| lines.line_of(offset));
    let place = describe(parents);
    let tables: Vec<&str> = parents
        .iter()
        .filter_map(|segment| match segment {
            Segment::Key(name) => Some(name.as_str()),
            Segment::Index(_) => None,
        })
        .collect();
    let hint = super::suggest::hint(key, super::suggest::known_keys(&tables).iter().copied());
    let message = if place.is_empty() {
        format!("unknown field `{key}` (not a section of master.toml){hint}")
    } else {
        format!("unknown field `{key}` in {place}{hint}")
    };
    Problem { line, message }
}

fn describe(parents: &[Segment]) -> String {
    let mut words: Vec<String> = Vec::new();
    let mut index = 0;
    while index < parents.len() {
        match (&parents[index], parents.get(index + 1)) {
            (Segment::Key(table), Some(Segment::Index(position))) if index == 0 => {
                words.push(format!("[[{table}]] {}", position + 1));
                index += 2;
            }
            (Segment::Key(table), _) if index == 0 => {
                words.push(format!("[{table}]"));
                index += 1;
            }
            (Segment::Key(key), Some(Segment::Index(position))) => {
                words.push(format!("{key} {}", position + 1));
                index += 2;
            }
            (Segment::Key(key), _) => {
                words.push(key.clone());
                index += 1;
            }
            (Segment::Index(position), _) => {
                words.push(format!("item {}", position + 1));
                index += 1;
            }
        }
    }
    words.reverse();
    words.join(" of ")
}

/// Byte offset where the key at `segments` is written.
fn key_start(document: &DeTable<'_>, segments: &[Segment]) -> Option<usize> {
    let mut table = document;
    let mut value: Option<&DeValue<'_>> = None;
    let mut found = None;
    for segment in segments {
        match segment {
            Segment::Key(name) => {
                if let Some(current) = value {
                    let DeValue::Table(inner) = current else {
                        return found;
                    };
                    table = inner;
                }
                let (key, entry) = table
                    .iter()
                    .find(|(key, _)| key.get_ref().as_ref() == name.as_str())?;
                found = Some(key.span().start);
                value = Some(entry.get_ref());
            }
            Segment::Index(position) => {
                let Some(DeValue::Array(items)) = value else {
                    return found;
                };
                let item = items.get(*position)?;
                found = Some(item.span().start);
                value = Some(item.get_ref());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_read_as_people_name_them() {
        let key = |name: &str| Segment::Key(name.to_string());
        assert_eq!(describe(&[key("sshd")]), "[sshd]");
        assert_eq!(
            describe(&[key("builder"), Segment::Index(1)]),
            "[[builder]] 2"
        );
        assert_eq!(
            describe(&[
                key("builder"),
                Segment::Index(0),
                key("steps"),
                Segment::Index(2)
            ]),
            "steps 3 of [[builder]] 1"
        );
        assert_eq!(describe(&[]), "");
    }
}
