//! Generates the `sluice.v1` API from `proto/` and a descriptor set for server reflection.
//! protoc comes from protoc-bin-vendored so a fresh machine needs nothing installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "../proto/sluice/v1/ingest.proto",
        "../proto/sluice/v1/search.proto",
        "../proto/sluice/v1/schema.proto",
    ];
    for proto in &protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("sluice_descriptor.bin"))
        .compile_protos(&protos, &["../proto"])?;
    Ok(())
}
