//! Where the installed tools live (`deploy/dev/install` puts them under `~/.cache/sluice`), and
//! free loopback ports.

use std::net::TcpListener;
use std::path::PathBuf;

/// Where `deploy/dev/install` caches things.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("SLUICE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/sluice")
        })
}

fn installed(path: PathBuf, what: &str) -> PathBuf {
    assert!(
        path.exists(),
        "{what} not found at {}: run deploy/dev/install",
        path.display()
    );
    path
}

pub fn nisshi() -> PathBuf {
    installed(cache_dir().join("nisshi/bin/nisshi"), "the nisshi broker")
}

pub fn grpcurl() -> PathBuf {
    installed(cache_dir().join("bin/grpcurl"), "grpcurl")
}

/// Debian's Prometheus, unpacked by `deploy/dev/install` (or `SLUICE_PROMETHEUS`).
pub fn prometheus() -> PathBuf {
    let path = std::env::var_os("SLUICE_PROMETHEUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("deploy-tools/prometheus/usr/bin/prometheus"));
    installed(path, "Prometheus")
}

pub fn model_dir() -> PathBuf {
    let dir = std::env::var_os("SLUICE_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("model"));
    installed(dir, "the all-MiniLM-L6-v2 model")
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}
