//! Generates the gRPC server from the one contract, `proto/keybrake.proto`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../proto/keybrake.proto");
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    // The real key travels in an Allow: its Debug is written by hand, redacted (wire.rs).
    config.skip_debug(["keybrake.v1.Allow"]);
    tonic_prost_build::configure().build_client(true).compile_with_config(
        config,
        &["../proto/keybrake.proto"],
        &["../proto"],
    )?;
    Ok(())
}
