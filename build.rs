//! Generates the filter's message types from the one contract, `proto/keybrake.proto`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/keybrake.proto");
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    prost_build::Config::new()
        .protoc_executable(protoc)
        // The real key travels in an Allow: its Debug is written by hand, redacted (wire.rs).
        .skip_debug(["keybrake.v1.Allow"])
        .compile_protos(&["proto/keybrake.proto"], &["proto"])?;
    Ok(())
}
