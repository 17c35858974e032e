//! Generates the heartbeat.v1 types and services. protoc comes from the
//! `protoc-bin-vendored` crate so a fresh machine needs nothing installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("heartbeat_descriptor.bin"))
        .compile_protos(
            &["heartbeat/v1/heartbeat.proto", "heartbeat/v1/report.proto"],
            &["."],
        )?;
    println!("cargo:rerun-if-changed=heartbeat");
    Ok(())
}
