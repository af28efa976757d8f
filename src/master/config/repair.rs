//! Values of the wrong type in `master.toml`, all reported in one run. serde stops at the first
//! value it cannot take (`env = { A = 1 }` would hide every other problem), so after each
//! such error the value at the error's span is replaced in the parsed document by a stand-in
//! of another type (or, when none fits, its key is taken out) and the typed pass runs again.
//! The caller reports each replaced value once and ignores what the checks then say about the
//! stand-ins' lines. This module does not know which types are right: serde does.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One step of the path to a value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// The stand-ins tried in turn, written as TOML values.
const STAND_INS: [&str; 6] = ["\"\"", "0", "false", "[]", "{}", "0.0"];

/// Where the repair of one value is: which stand-in was tried last.
#[derive(Debug, Default)]
pub(super) struct Repairs {
    /// (the value's path, how many stand-ins were tried there). By path, not by the error's
    /// span: serde's error about a stand-in need not point at exactly the bytes its first error
    /// did, and the value's mistake is reported once.
    tried: Vec<(Vec<Step>, usize)>,
}

/// What `Repairs::repair` did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Repaired {
    /// A new problem: report it. The document was changed.
    First,
    /// The same value again (its last stand-in did not fit either): do not report it again. The
    /// document was changed.
    Again,
    /// Nothing left to try; `first`: this value's mistake was not reported yet.
    GaveUp { first: bool },
}

impl Repairs {
    /// Changes the value at `span` (the innermost value that holds it) for the next attempt.
    /// `message` is serde's: for an unknown variant the stand-in is the first variant it
    /// expects, so a required key stays present (taking it out would add "missing field").
    pub(super) fn repair(
        &mut self,
        document: &mut Spanned<DeTable<'_>>,
        span: Range<usize>,
        message: &str,
    ) -> Repaired {
        let Some(path) = innermost(document.get_ref(), &span) else {
            return Repaired::GaveUp { first: true };
        };
        let attempt = match self.tried.iter_mut().find(|(tried, _)| *tried == path) {
            Some((_, count)) => {
                *count += 1;
                *count
            }
            None => {
                self.tried.push((path.clone(), 0));
                0
            }
        };
        let verdict = if attempt == 0 {
            Repaired::First
        } else {
            Repaired::Again
        };
        let gave_up = Repaired::GaveUp {
            first: attempt == 0,
        };
        let Some(slot) = value_mut(document.get_mut(), &path) else {
            return gave_up;
        };
        if attempt == 0
            && let Some(variant) = expected_variant(message)
        {
            let original = slot.span();
            *slot = Spanned::new(original, DeValue::String(variant.to_string().into()));
            return verdict;
        }
        let current = slot.get_ref().type_str();
        let stand_ins: Vec<_> = STAND_INS
            .iter()
            .filter_map(|text| DeValue::parse(text).ok())
            .filter(|value| value.get_ref().type_str() != current)
            .collect();
        let last_try = stand_ins.len();
        if let Some(stand_in) = stand_ins.into_iter().nth(attempt) {
            let original = slot.span();
            *slot = Spanned::new(original, stand_in.into_inner());
            return verdict;
        }
        // No stand-in fits (an unknown variant, say): take the key out, if it is a key.
        if attempt == last_try
            && let Some((Step::Key(key), parent)) = path.split_last()
            && let Some(DeValue::Table(table)) = parent_mut(document.get_mut(), parent)
        {
            table.remove(key.as_str());
            return verdict;
        }
        gave_up
    }
}

/// The first variant serde's "unknown variant `x`, expected `a` or `b`" (or "expected one of
/// `a`, `b`") names.
fn expected_variant(message: &str) -> Option<&str> {
    let expected = message
        .strip_prefix("unknown variant ")?
        .split_once("expected")?
        .1;
    let (_, rest) = expected.split_once('`')?;
    let (variant, _) = rest.split_once('`')?;
    Some(variant).filter(|variant| !variant.is_empty())
}

/// The path of the innermost value whose span holds `span`. Every value is visited: the span
/// of an array of tables (`[[builder]]`) does not cover its tables, so containers cannot be
/// ruled out by their own span.
fn innermost(document: &DeTable<'_>, span: &Range<usize>) -> Option<Vec<Step>> {
    fn holds(outer: &Range<usize>, inner: &Range<usize>) -> bool {
        outer.start <= inner.start && inner.end <= outer.end
    }
    type Best = Option<(usize, Vec<Step>)>;
    fn visit(
        value: &Spanned<DeValue<'_>>,
        span: &Range<usize>,
        path: &mut Vec<Step>,
        best: &mut Best,
    ) {
        let own = value.span();
        if holds(&own, span) && best.as_ref().is_none_or(|(size, _)| own.len() <= *size) {
            *best = Some((own.len(), path.clone()));
        }
        match value.get_ref() {
            DeValue::Table(table) => {
                for (key, entry) in table.iter() {
                    path.push(Step::Key(key.get_ref().to_string()));
                    visit(entry, span, path, best);
                    path.pop();
                }
            }
            DeValue::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    path.push(Step::Index(index));
                    visit(item, span, path, best);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    let mut best = None;
    let mut path = Vec::new();
    for (key, entry) in document.iter() {
        path.push(Step::Key(key.get_ref().to_string()));
        visit(entry, span, &mut path, &mut best);
        path.pop();
    }
    best.map(|(_, path)| path)
}

fn value_mut<'a, 'i>(
    document: &'a mut DeTable<'i>,
    path: &[Step],
) -> Option<&'a mut Spanned<DeValue<'i>>> {
    let (first, rest) = path.split_first()?;
    let Step::Key(first) = first else {
        return None;
    };
    let mut current = document.get_mut(first.as_str())?;
    for step in rest {
        current = match (step, current.get_mut()) {
            (Step::Key(key), DeValue::Table(table)) => table.get_mut(key.as_str())?,
            (Step::Index(index), DeValue::Array(items)) => items.get_mut(*index)?,
            _ => return None,
        };
    }
    Some(current)
}

fn parent_mut<'a, 'i>(document: &'a mut DeTable<'i>, path: &[Step]) -> Option<&'a mut DeValue<'i>> {
    value_mut(document, path).map(Spanned::get_mut)
}
