//! What a tenant may register: each schema's size and shape, and how many subjects and
//! versions it keeps. Parsing a schema and checking it against a subject's versions cost
//! (schema size × versions); these limits bound both before any of that work starts.

use serde_json::Value;

use super::RegistryError;
use crate::config::SchemasConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistrationLimits {
    /// The schema's JSON text, in bytes.
    pub max_schema_bytes: usize,
    /// How deeply types nest: a record's field types, array items, map values and union
    /// branches are each one level below what holds them.
    pub max_schema_depth: usize,
    /// Record fields and enum symbols, counted over the whole schema (union branches are
    /// bounded by the depth and the size).
    pub max_schema_fields: usize,
    /// Subjects per tenant, soft-deleted ones included (they are kept until deleted for good).
    pub max_subjects_per_tenant: usize,
    /// Versions per subject, soft-deleted ones included.
    pub max_versions_per_subject: usize,
}

impl Default for RegistrationLimits {
    fn default() -> Self {
        SchemasConfig::default().limits()
    }
}

impl RegistrationLimits {
    /// Refuses a schema text that is too large or too complex, without parsing it as Avro.
    /// serde_json stops at 128 levels of JSON nesting, so the walk below is bounded too.
    pub fn check_definition(&self, text: &str) -> Result<(), RegistryError> {
        if text.len() > self.max_schema_bytes {
            return Err(RegistryError::InvalidSchema(format!(
                "the schema is {} bytes; schemas are at most {} bytes (schemas.max_schema_bytes)",
                text.len(),
                self.max_schema_bytes
            )));
        }
        let value: Value = serde_json::from_str(text)
            .map_err(|e| RegistryError::InvalidSchema(format!("the schema is not JSON: {e}")))?;
        let mut shape = Shape::default();
        shape.visit(&value, 1);
        if shape.depth > self.max_schema_depth {
            return Err(RegistryError::InvalidSchema(format!(
                "the schema nests types {} levels deep; at most {} (schemas.max_schema_depth)",
                shape.depth, self.max_schema_depth
            )));
        }
        if shape.members > self.max_schema_fields {
            return Err(RegistryError::InvalidSchema(format!(
                "the schema has {} fields and enum symbols; at most {} (schemas.max_schema_fields)",
                shape.members, self.max_schema_fields
            )));
        }
        Ok(())
    }

    /// Refuses one more version of a subject that holds `versions` already, or (when it holds
    /// none) one more subject for a tenant that holds `subjects`.
    pub fn check_counts(
        &self,
        tenant: &str,
        subject: &str,
        versions: usize,
        subjects: usize,
    ) -> Result<(), RegistryError> {
        if versions >= self.max_versions_per_subject {
            return Err(RegistryError::LimitReached {
                limit: "schemas.max_versions_per_subject",
                message: format!(
                    "subject {subject} holds {versions} versions, the most a subject may hold \
                     (soft-deleted ones count until they are deleted permanently)"
                ),
            });
        }
        if versions == 0 && subjects >= self.max_subjects_per_tenant {
            return Err(RegistryError::LimitReached {
                limit: "schemas.max_subjects_per_tenant",
                message: format!(
                    "tenant {tenant} holds {subjects} subjects, the most a tenant may hold \
                     (soft-deleted ones count until they are deleted permanently)"
                ),
            });
        }
        Ok(())
    }
}

/// How deep and how wide a schema's JSON is, in Avro's terms.
#[derive(Default)]
struct Shape {
    depth: usize,
    members: usize,
}

impl Shape {
    fn visit(&mut self, value: &Value, depth: usize) {
        self.depth = self.depth.max(depth);
        match value {
            // A union.
            Value::Array(branches) => {
                for branch in branches {
                    self.visit(branch, depth + 1);
                }
            }
            Value::Object(map) => {
                if let Some(Value::Array(fields)) = map.get("fields") {
                    self.members += fields.len();
                    for field in fields {
                        if let Some(field_type) = field.get("type") {
                            self.visit(field_type, depth + 1);
                        }
                    }
                }
                if let Some(Value::Array(symbols)) = map.get("symbols") {
                    self.members += symbols.len();
                }
                for key in ["items", "values"] {
                    if let Some(inner) = map.get(key) {
                        self.visit(inner, depth + 1);
                    }
                }
                // `{"type": {"type": "record", …}}` wraps a type in another object.
                if let Some(inner @ (Value::Object(_) | Value::Array(_))) = map.get("type") {
                    self.visit(inner, depth + 1);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> RegistrationLimits {
        RegistrationLimits {
            max_schema_bytes: 10_000,
            max_schema_depth: 4,
            max_schema_fields: 10,
            max_subjects_per_tenant: 2,
            max_versions_per_subject: 3,
        }
    }

    fn nested_records(levels: usize) -> String {
        let mut schema = r#""string""#.to_owned();
        for level in 0..levels {
            schema = format!(
                r#"{{"type":"record","name":"R{level}","fields":[{{"name":"f","type":{schema}}}]}}"#
            );
        }
        schema
    }

    #[test]
    fn size_depth_and_members_are_bounded() {
        let limits = limits();
        assert!(limits.check_definition(r#""string""#).is_ok());
        assert!(limits.check_definition(&nested_records(3)).is_ok());
        let deep = limits.check_definition(&nested_records(4)).unwrap_err();
        assert!(deep.to_string().contains("5 levels deep"), "{deep}");
        let array_of_maps = r#"{"type":"array","items":{"type":"map","values":{"type":"array","items":{"type":"map","values":"int"}}}}"#;
        assert!(limits.check_definition(array_of_maps).is_err());

        let fields: Vec<String> = (0..11)
            .map(|i| format!(r#"{{"name":"f{i}","type":"int"}}"#))
            .collect();
        let wide = format!(
            r#"{{"type":"record","name":"W","fields":[{}]}}"#,
            fields.join(",")
        );
        let error = limits.check_definition(&wide).unwrap_err();
        assert!(error.to_string().contains("11 fields"), "{error}");
        let symbols: Vec<String> = (0..11).map(|i| format!(r#""S{i}""#)).collect();
        let wide_enum = format!(
            r#"{{"type":"enum","name":"E","symbols":[{}]}}"#,
            symbols.join(",")
        );
        assert!(limits.check_definition(&wide_enum).is_err());

        let large = format!(r#"{{"type":"string","doc":"{}"}}"#, "x".repeat(10_000));
        let error = limits.check_definition(&large).unwrap_err();
        assert!(
            error.to_string().contains("schemas.max_schema_bytes"),
            "{error}"
        );
        // JSON nested past serde_json's limit is refused, not walked.
        let brackets = format!("{}{}", "[".repeat(5_000), "]".repeat(5_000));
        assert!(limits.check_definition(&brackets).is_err());
    }

    #[test]
    fn subjects_and_versions_are_counted() {
        let limits = limits();
        assert!(limits.check_counts("acme", "acme.a-value", 2, 2).is_ok());
        assert!(matches!(
            limits.check_counts("acme", "acme.a-value", 3, 0),
            Err(RegistryError::LimitReached {
                limit: "schemas.max_versions_per_subject",
                ..
            })
        ));
        assert!(limits.check_counts("acme", "acme.c-value", 0, 1).is_ok());
        assert!(matches!(
            limits.check_counts("acme", "acme.c-value", 0, 2),
            Err(RegistryError::LimitReached {
                limit: "schemas.max_subjects_per_tenant",
                ..
            })
        ));
    }
}
