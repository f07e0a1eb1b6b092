//! Byte sizes as people write them: `"50MiB"`, `"1.5 GiB"`, `"4096"`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A number of bytes that reads and prints in binary units (KiB = 1024 B).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {input:?}: expected a number with an optional unit (B, KiB, MiB, GiB, TiB, or KB, MB, GB, TB), e.g. \"50MiB\"")]
pub struct ByteSizeError {
    input: String,
}

const UNITS: [(&str, u64); 9] = [
    ("b", 1),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
];

impl ByteSize {
    pub const fn mib(n: u64) -> Self {
        Self(n << 20)
    }

    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let error = || ByteSizeError { input: input.to_string() };
        let text = input.trim();
        let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: f64 = number.parse().map_err(|_| error())?;
        let unit = unit.trim().to_ascii_lowercase();
        let multiplier = if unit.is_empty() { 1 } else { UNITS.iter().find(|(name, _)| *name == unit).ok_or_else(error)?.1 };
        let bytes = number * multiplier as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(error());
        }
        Ok(Self(bytes.round() as u64))
    }
}

impl fmt::Display for ByteSize {
    /// The largest binary unit that keeps the number at least 1, without trailing zeros:
    /// `50MiB`, `1.5GiB`, `100B`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (unit, size) =
            [("TiB", 1u64 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)].into_iter().find(|(_, size)| self.0 >= *size).unwrap_or(("B", 1));
        let value = self.0 as f64 / size as f64;
        let text = format!("{value:.2}");
        let text = text.trim_end_matches('0').trim_end_matches('.');
        write!(f, "{text}{unit}")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => Ok(Self(n)),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_and_decimal_units() {
        assert_eq!("50MiB".parse::<ByteSize>().unwrap().bytes(), 52_428_800);
        assert_eq!("100 mib".parse::<ByteSize>().unwrap().bytes(), 104_857_600);
        assert_eq!("1.5GiB".parse::<ByteSize>().unwrap().bytes(), 1_610_612_736);
        assert_eq!("2MB".parse::<ByteSize>().unwrap().bytes(), 2_000_000);
        assert_eq!("4096".parse::<ByteSize>().unwrap().bytes(), 4096);
        for bad in ["", "MiB", "5 parsecs", "-1MiB", "1.2.3GiB"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn displays_the_largest_fitting_unit_and_round_trips() {
        for (bytes, text) in [(52_428_800, "50MiB"), (1_610_612_736, "1.5GiB"), (100, "100B"), (1536, "1.5KiB")] {
            assert_eq!(ByteSize(bytes).to_string(), text);
            assert_eq!(text.parse::<ByteSize>().unwrap(), ByteSize(bytes));
        }
    }
}
