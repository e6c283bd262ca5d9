//! Comparing shared secrets (the fleet's relay secret) without telling an attacker, by the time
//! taken, how much of a guess was right.

use ring::digest::{SHA256, digest};

/// Whether `presented` is the non-empty secret `expected`. Both are hashed first and the
/// digests compared in full, so the time taken does not depend on where they differ (nor on
/// the secret's length).
pub fn secrets_match(presented: &str, expected: &str) -> bool {
    let (a, b) = (
        digest(&SHA256, presented.as_bytes()),
        digest(&SHA256, expected.as_bytes()),
    );
    let same = a
        .as_ref()
        .iter()
        .zip(b.as_ref().iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0;
    same && !presented.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_whole_non_empty_secret_matches() {
        assert!(secrets_match("a-long-fleet-secret", "a-long-fleet-secret"));
        assert!(!secrets_match("a-long-fleet-secret", "a-long-fleet-secreT"));
        assert!(!secrets_match("a-long-fleet", "a-long-fleet-secret"));
        assert!(!secrets_match("", ""));
    }
}
