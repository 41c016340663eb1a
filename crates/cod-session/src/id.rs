//! Session ids: 128 random bits from the operating system, written as 32 lowercase hex digits.
//!
//! An id is the only thing that lets a client reach its buffer, so ids are never derived from
//! anything a client sends and never reused.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An unguessable, URL-safe session id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId([u8; 16]);

/// The operating system's random source failed, so no id could be made.
#[derive(Debug, thiserror::Error)]
#[error("reading 16 random bytes for a session id")]
pub struct RandomError(#[source] getrandom::Error);

/// A string that is not 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("session id must be 32 hex digits, got {len} characters")]
pub struct ParseSessionIdError {
    /// length of the rejected string
    len: usize,
}

impl SessionId {
    /// A fresh id from the operating system's random source.
    pub fn random() -> Result<Self, RandomError> {
        let mut bytes = [0; 16];
        getrandom::fill(&mut bytes).map_err(RandomError)?;
        Ok(Self(bytes))
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

impl FromStr for SessionId {
    type Err = ParseSessionIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0; 16];
        // Only lowercase, so that one id has one spelling.
        if s.len() != 32 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ParseSessionIdError { len: s.len() });
        }
        hex::decode_to_slice(s, &mut bytes).map_err(|_| ParseSessionIdError { len: s.len() })?;
        Ok(Self(bytes))
    }
}

impl Serialize for SessionId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SessionId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_hex_and_parse_back() {
        let a = SessionId::random().expect("random source");
        let b = SessionId::random().expect("random source");
        assert_ne!(a, b);
        let text = a.to_string();
        assert_eq!(text.len(), 32);
        assert!(
            text.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        );
        assert_eq!(text.parse::<SessionId>(), Ok(a));
        let json = serde_json::to_string(&a).expect("serializes");
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<SessionId>(&json).expect("parses"), a);
    }

    #[test]
    fn malformed_ids_are_rejected() {
        for bad in ["", "abc", &"g".repeat(32), &"A".repeat(32), &"0".repeat(33)] {
            assert!(bad.parse::<SessionId>().is_err(), "{bad:?}");
        }
        assert!(serde_json::from_str::<SessionId>("\"xyz\"").is_err());
    }
}
