//! Generates the gRPC client from the one contract, `proto/keybrake.proto`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../proto/keybrake.proto");
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure().build_server(false).build_client(true).compile_with_config(
        config,
        &["../proto/keybrake.proto"],
        &["../proto"],
    )?;
    Ok(())
}
