//! Tenants: who a request acts for. Every layer carries the tenant id: the Kafka key and a
//! header, the vector store payload, the database rows.

use std::fmt;

/// A validated tenant id: 1 to 64 characters of `[a-z0-9_-]`, so it is safe in Kafka keys,
/// headers, payload filters and log lines without escaping.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("tenant id {0:?} is invalid: 1 to 64 characters of a-z, 0-9, '_' and '-'")]
pub struct InvalidTenantId(pub String);

impl TenantId {
    pub fn parse(id: &str) -> Result<Self, InvalidTenantId> {
        let valid = (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if valid {
            Ok(Self(id.to_owned()))
        } else {
            Err(InvalidTenantId(id.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_simple_ids_and_refuses_the_rest() {
        assert_eq!(TenantId::parse("acme-1").unwrap().as_str(), "acme-1");
        for bad in ["", "Acme", "a/b", "a b", &"x".repeat(65)] {
            assert!(TenantId::parse(bad).is_err(), "{bad:?}");
        }
    }
}
