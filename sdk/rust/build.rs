//! Generates the `sluice.v1` client from the repository's `proto/`, with protoc from
//! protoc-bin-vendored so that a fresh machine needs nothing installed.
//!
//! The server side is generated too, apart (`OUT_DIR/fake_gateway/`, the messages taken from
//! the client's module rather than repeated), for the unit tests' in-process fake gateway:
//! only `#[cfg(test)]` code includes it.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "../../proto/sluice/v1/ingest.proto",
        "../../proto/sluice/v1/search.proto",
        "../../proto/sluice/v1/schema.proto",
    ];
    let includes = ["../../proto"];
    for proto in &protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&protos, &includes)?;

    let fake_gateway = out_dir.join("fake_gateway");
    std::fs::create_dir_all(&fake_gateway)?;
    tonic_prost_build::configure()
        .build_client(false)
        .out_dir(&fake_gateway)
        .extern_path(".sluice.v1", "crate::proto")
        .compile_protos(&protos, &includes)?;
    Ok(())
}
