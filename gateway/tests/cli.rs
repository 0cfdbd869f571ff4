//! The `sluice-gateway` command line: it explains itself, and a configuration it cannot use
//! stops it at once with the reason. (Building this test also builds the binary the
//! end-to-end tests start as a separate process.)

use std::process::Command;

const BINARY: &str = env!("CARGO_BIN_EXE_sluice-gateway");

#[test]
fn help_lists_the_flags() {
    let output = Command::new(BINARY).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--config",
        "--standalone",
        "--listen",
        "--dev-tenant-header",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

#[test]
fn a_missing_configuration_file_is_named() {
    let output = Command::new(BINARY)
        .args(["--config", "/nonexistent/sluice.toml"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/sluice.toml"), "{stderr}");
}
