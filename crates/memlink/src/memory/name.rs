//! The naming rule for memlink objects and how names map to files.
//!
//! A name is 1 to [`MAX_NAME_LEN`] bytes of ASCII letters, digits, `.`, `_` and `-`, not starting
//! with `.`. Every object lives in the shared memory directory as `memlink.<name>`, so memlink's
//! objects never collide with other programs' and `memlink ls` can find them all.

use crate::error::{Error, Result};

/// Longest accepted name, in bytes. Leaves room for the file prefix within `NAME_MAX` (255).
pub const MAX_NAME_LEN: usize = 200;

/// Prefix of every memlink object's file name in the shared memory directory.
pub(crate) const FILE_PREFIX: &str = "memlink.";

/// Checks `name` against the naming rule.
///
/// # Errors
/// [`Error::InvalidName`] naming the rule that is broken.
pub fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "a name must not be empty"
    } else if name.len() > MAX_NAME_LEN {
        "a name must be at most 200 bytes long"
    } else if name.starts_with('.') {
        "a name must not start with '.'"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        "a name may contain only ASCII letters, digits, '.', '_' and '-' (no '/', spaces or other characters)"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        name: name.to_owned(),
        reason,
    })
}

/// The file name of object `name` (which must already be valid).
pub(crate) fn file_name(name: &str) -> String {
    format!("{FILE_PREFIX}{name}")
}

/// The object name of a file in the shared memory directory, if it is one of ours.
pub(crate) fn object_name(file_name: &str) -> Option<&str> {
    file_name
        .strip_prefix(FILE_PREFIX)
        .filter(|n| validate_name(n).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_each_broken_rule_with_its_reason() {
        for (bad, needle) in [
            ("", "empty"),
            ("a/b", "'/'"),
            ("/abs", "'/'"),
            ("..", "'.'"),
            (".hidden", "'.'"),
            ("sp ace", "only ASCII"),
            ("nul\0", "only ASCII"),
            ("é", "only ASCII"),
        ] {
            match validate_name(bad) {
                Err(Error::InvalidName { reason, .. }) => {
                    assert!(reason.contains(needle), "{bad:?}: {reason}")
                }
                other => panic!("{bad:?} accepted: {other:?}"),
            }
        }
        assert!(validate_name(&"x".repeat(MAX_NAME_LEN)).is_ok());
        assert!(matches!(
            validate_name(&"x".repeat(MAX_NAME_LEN + 1)),
            Err(Error::InvalidName { .. })
        ));
    }

    proptest! {
        #[test]
        fn valid_names_round_trip_through_file_names(name in "[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}") {
            prop_assert!(validate_name(&name).is_ok());
            let file = file_name(&name);
            prop_assert!(file.len() <= 255);
            prop_assert_eq!(object_name(&file), Some(name.as_str()));
        }

        #[test]
        fn accepted_names_never_escape_the_directory(name in "\\PC{0,40}") {
            if validate_name(&name).is_ok() {
                prop_assert!(!name.contains('/') && !name.starts_with('.') && !name.is_empty());
            }
        }
    }
}
