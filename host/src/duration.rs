//! Durations written as text: `"500ms"`, `"2s"`, `"1m 30s"` (flags, config files,
//! admin requests).

use std::time::Duration;

/// Parses a duration such as `500ms`, `2s` or `1m 30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration like \"500ms\" or \"2s\" ({e})"))
}

/// Reads a duration written as text (`#[serde(with = "crate::duration::text")]`).
pub mod text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// Reads text such as `"500ms"` or `"2s"`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Reads an optional duration written as text.
pub mod optional_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// Reads text such as `"500ms"`, when the field is there.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}
