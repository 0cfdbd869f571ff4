//! The dependency report behind `/healthz` and the gRPC health service, shaped as health
//! endpoints usually are: an overall status and one entry per dependency.

use std::collections::BTreeMap;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Up,
    Down,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Dependency {
    pub status: Status,
    /// What was checked, or why it failed.
    pub detail: String,
}

impl Dependency {
    pub fn from_result<T: std::fmt::Display, E: std::fmt::Display>(result: Result<T, E>) -> Self {
        match result {
            Ok(detail) => Dependency {
                status: Status::Up,
                detail: detail.to_string(),
            },
            Err(error) => Dependency {
                status: Status::Down,
                detail: error.to_string(),
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HealthReport {
    /// `up` only when every dependency is up.
    pub status: Status,
    pub dependencies: BTreeMap<String, Dependency>,
}

impl HealthReport {
    pub fn new(dependencies: BTreeMap<String, Dependency>) -> Self {
        let status = if dependencies.values().all(|d| d.status == Status::Up) {
            Status::Up
        } else {
            Status::Down
        };
        Self {
            status,
            dependencies,
        }
    }
}
