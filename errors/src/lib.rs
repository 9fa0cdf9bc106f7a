//! `byoc-errors`: the one way an error is turned into a line of text.
//!
//! The rule every crate of the workspace follows (CONTRIBUTING.md):
//! - an error is a typed value (`thiserror` enum per module) whose variants
//!   carry the context a reader needs: which file, which operation, which
//!   setting;
//! - the cause is kept as `#[source]` and never repeated in `Display`;
//! - text is made once, at the edge (a log line, an audit record, an answer
//!   to the control plane, a CLI's last message) with [`chain`], which walks
//!   the sources; `anyhow` only at the top of a binary (its `{:#}` walks the
//!   same chain);
//! - no decision is taken by matching an error's text: match the type.

use std::error::Error;
use std::fmt;

/// `e` and its causes, outermost first, joined by ": ". A cause whose text is
/// exactly its parent's (some libraries wrap an error in one that says the
/// same) is printed once.
pub fn chain(e: &(dyn Error + 'static)) -> String {
    Chain(e).to_string()
}

/// [`chain`] as a `Display` value, for `tracing` fields and `format!`.
#[derive(Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut last = self.0.to_string();
        f.write_str(&last)?;
        let mut cur = self.0.source();
        while let Some(err) = cur {
            let msg = err.to_string();
            if msg != last {
                write!(f, ": {msg}")?;
                last = msg;
            }
            cur = err.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Finds the first error of type `T` in `e`'s chain: how code decides on a
/// cause (by its type, never by its text).
///
/// An `std::io::Error` that wraps another error reports that error's *source*
/// as its own, skipping the wrapped error itself (TLS failures arrive this
/// way): the wrapped error is looked at too.
pub fn find<'a, T: Error + 'static>(e: &'a (dyn Error + 'static)) -> Option<&'a T> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        if let Some(inner) = err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref())
            && let Some(t) = find::<T>(inner)
        {
            return Some(t);
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("disk full")]
    struct Root;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot write /var/lib/x")]
    struct Mid(#[source] Root);

    #[derive(Debug, thiserror::Error)]
    #[error("cannot write /var/lib/x")]
    struct Same(#[source] Mid);

    #[test]
    fn causes_are_joined_outermost_first_and_an_exact_repeat_is_dropped() {
        assert_eq!(chain(&Mid(Root)), "cannot write /var/lib/x: disk full");
        assert_eq!(chain(&Same(Mid(Root))), "cannot write /var/lib/x: disk full");
        assert_eq!(format!("{}", Chain(&Root)), "disk full");
    }

    #[test]
    fn a_cause_is_found_by_its_type() {
        let e = Same(Mid(Root));
        assert!(find::<Root>(&e).is_some());
        assert!(find::<std::io::Error>(&e).is_none());
    }

    #[derive(Debug, thiserror::Error)]
    #[error("connect failed")]
    struct Wrapper(#[source] std::io::Error);

    #[test]
    fn a_cause_wrapped_in_an_io_error_is_found() {
        let e = Wrapper(std::io::Error::other(Mid(Root)));
        assert!(find::<Mid>(&e).is_some());
        assert!(find::<Root>(&e).is_some());
    }
}
