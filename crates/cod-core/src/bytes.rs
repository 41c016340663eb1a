//! A byte count with human units, used for every size in limits and configuration.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A number of bytes. Parses `1024`, `"64MiB"`, `"1 GiB"`, `"512k"`; displays the largest
/// binary unit that divides it exactly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bytes(pub u64);

impl Bytes {
    /// One kibibyte.
    pub const KIB: u64 = 1024;
    /// One mebibyte.
    pub const MIB: u64 = 1024 * 1024;
    /// One gibibyte.
    pub const GIB: u64 = 1024 * 1024 * 1024;

    /// `n` kibibytes.
    pub const fn kib(n: u64) -> Self {
        Self(n * Self::KIB)
    }

    /// `n` mebibytes.
    pub const fn mib(n: u64) -> Self {
        Self(n * Self::MIB)
    }

    /// The count in bytes.
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// Why a byte size did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseBytesError {
    /// no number at the start
    #[error("expected a number of bytes such as 1024 or \"64MiB\", got {0:?}")]
    NoNumber(String),
    /// the unit is not one of B, K, KB, KiB, M, MB, MiB, G, GB, GiB
    #[error("unknown size unit {0:?} (use B, KiB, MiB or GiB)")]
    UnknownUnit(String),
    /// the value does not fit in 64 bits
    #[error("size {0:?} is too large")]
    Overflow(String),
}

impl FromStr for Bytes {
    type Err = ParseBytesError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        if digits_end == 0 {
            return Err(ParseBytesError::NoNumber(s.to_owned()));
        }
        let n: u64 = t[..digits_end]
            .parse()
            .map_err(|_| ParseBytesError::Overflow(s.to_owned()))?;
        let unit = t[digits_end..].trim();
        let mult = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => Self::KIB,
            "m" | "mb" | "mib" => Self::MIB,
            "g" | "gb" | "gib" => Self::GIB,
            _ => return Err(ParseBytesError::UnknownUnit(unit.to_owned())),
        };
        n.checked_mul(mult)
            .map(Bytes)
            .ok_or_else(|| ParseBytesError::Overflow(s.to_owned()))
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n != 0 && n.is_multiple_of(Self::GIB) {
            write!(f, "{}GiB", n / Self::GIB)
        } else if n != 0 && n.is_multiple_of(Self::MIB) {
            write!(f, "{}MiB", n / Self::MIB)
        } else if n != 0 && n.is_multiple_of(Self::KIB) {
            write!(f, "{}KiB", n / Self::KIB)
        } else {
            write!(f, "{n}B")
        }
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_string())
        } else {
            s.serialize_u64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte count such as 1048576 or \"1MiB\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Bytes, E> {
                u64::try_from(v)
                    .map(Bytes)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Bytes, E> {
                v.parse().map_err(E::custom)
            }
        }
        if d.is_human_readable() {
            d.deserialize_any(V)
        } else {
            d.deserialize_u64(V)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_units() {
        assert_eq!("1024".parse::<Bytes>(), Ok(Bytes(1024)));
        assert_eq!("64MiB".parse::<Bytes>(), Ok(Bytes::mib(64)));
        assert_eq!("1 GiB".parse::<Bytes>(), Ok(Bytes(Bytes::GIB)));
        assert_eq!("512k".parse::<Bytes>(), Ok(Bytes::kib(512)));
        assert!(matches!(
            "12 parsecs".parse::<Bytes>(),
            Err(ParseBytesError::UnknownUnit(_))
        ));
        assert!(matches!(
            "MiB".parse::<Bytes>(),
            Err(ParseBytesError::NoNumber(_))
        ));
        assert!(matches!(
            "99999999999999999999GiB".parse::<Bytes>(),
            Err(ParseBytesError::Overflow(_))
        ));
    }

    #[test]
    fn displays_largest_exact_unit() {
        assert_eq!(Bytes::mib(64).to_string(), "64MiB");
        assert_eq!(Bytes::kib(3).to_string(), "3KiB");
        assert_eq!(Bytes(1536).to_string(), "1536B");
        assert_eq!(Bytes(0).to_string(), "0B");
    }

    proptest! {
        #[test]
        fn display_round_trips(n in any::<u64>()) {
            let b = Bytes(n);
            prop_assert_eq!(b.to_string().parse::<Bytes>(), Ok(b));
        }
    }
}
