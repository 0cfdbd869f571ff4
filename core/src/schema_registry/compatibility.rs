//! Compatibility levels, as the Confluent Schema Registry defines them, decided by apache-avro's
//! schema resolution rules (`SchemaCompatibility::can_read(writer, reader)`).
//!
//! - BACKWARD: readers of the new schema can read data written with the latest version.
//! - FORWARD: readers of the latest version can read data written with the new schema.
//! - FULL: both.
//! - `*_TRANSITIVE`: the same against every live version, not only the latest.
//! - NONE: anything goes.

use std::fmt;
use std::str::FromStr;

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::Schema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompatibilityLevel {
    #[default]
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
    None,
}

impl CompatibilityLevel {
    pub const ALL: [CompatibilityLevel; 7] = [
        Self::Backward,
        Self::BackwardTransitive,
        Self::Forward,
        Self::ForwardTransitive,
        Self::Full,
        Self::FullTransitive,
        Self::None,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backward => "BACKWARD",
            Self::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Self::Forward => "FORWARD",
            Self::ForwardTransitive => "FORWARD_TRANSITIVE",
            Self::Full => "FULL",
            Self::FullTransitive => "FULL_TRANSITIVE",
            Self::None => "NONE",
        }
    }

    fn transitive(self) -> bool {
        matches!(
            self,
            Self::BackwardTransitive | Self::ForwardTransitive | Self::FullTransitive
        )
    }

    fn backward(self) -> bool {
        matches!(
            self,
            Self::Backward | Self::BackwardTransitive | Self::Full | Self::FullTransitive
        )
    }

    fn forward(self) -> bool {
        matches!(
            self,
            Self::Forward | Self::ForwardTransitive | Self::Full | Self::FullTransitive
        )
    }

    /// Why `candidate` may not follow `existing` (a subject's live versions, oldest first) at
    /// this level; empty when it may.
    pub fn violations(self, candidate: &Schema, existing: &[(i32, Schema)]) -> Vec<String> {
        let against: &[(i32, Schema)] = if self.transitive() {
            existing
        } else {
            existing.last().map(std::slice::from_ref).unwrap_or(&[])
        };
        let mut messages = Vec::new();
        for (version, old) in against {
            if self.backward() {
                if let Err(e) = SchemaCompatibility::can_read(old, candidate) {
                    messages.push(format!(
                        "the new schema cannot read data written with version {version}: {e}"
                    ));
                }
            }
            if self.forward() {
                if let Err(e) = SchemaCompatibility::can_read(candidate, old) {
                    messages.push(format!(
                        "readers of version {version} cannot read data written with the new schema: {e}"
                    ));
                }
            }
        }
        messages
    }
}

impl fmt::Display for CompatibilityLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CompatibilityLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|level| level.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!(
                    "unknown compatibility level {s:?}; one of {}",
                    Self::ALL.map(Self::as_str).join(", ")
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(fields: &str) -> Schema {
        Schema::parse_str(&format!(
            r#"{{"type":"record","name":"Doc","fields":[{fields}]}}"#
        ))
        .unwrap()
    }

    #[test]
    fn levels_decide_as_confluent_documents() {
        let v1 = schema(r#"{"name":"text","type":"string"}"#);
        let with_default = schema(
            r#"{"name":"text","type":"string"},{"name":"lang","type":"string","default":"en"}"#,
        );
        let without_default =
            schema(r#"{"name":"text","type":"string"},{"name":"lang","type":"string"}"#);
        let retyped = schema(r#"{"name":"text","type":"long"}"#);
        let existing = [(1, v1.clone())];
        use CompatibilityLevel::*;
        // A field with a default: readable both ways.
        for level in CompatibilityLevel::ALL {
            assert!(
                level.violations(&with_default, &existing).is_empty(),
                "{level}"
            );
        }
        // A new required field: old data lacks it (not BACKWARD), but old readers skip it.
        assert!(!Backward.violations(&without_default, &existing).is_empty());
        assert!(Forward.violations(&without_default, &existing).is_empty());
        assert!(!Full.violations(&without_default, &existing).is_empty());
        assert!(None.violations(&retyped, &existing).is_empty());
        assert!(!Backward.violations(&retyped, &existing).is_empty());
        // Transitive levels look past the latest version.
        let history = [(1, v1), (2, with_default.clone())];
        let drops_lang_needs_text = schema(r#"{"name":"lang","type":"string","default":"en"}"#);
        assert!(!Forward
            .violations(&drops_lang_needs_text, &history)
            .is_empty());
        let only_lang = schema(r#"{"name":"lang","type":"string"}"#);
        assert!(Backward.violations(&only_lang, &history).is_empty());
        assert!(!BackwardTransitive
            .violations(&only_lang, &history)
            .is_empty());
        assert_eq!(
            "full_transitive".parse::<CompatibilityLevel>(),
            Ok(FullTransitive)
        );
        assert!("sideways".parse::<CompatibilityLevel>().is_err());
    }
}
