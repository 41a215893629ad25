//! Compiles `proto/gofer/v1/*.proto` with protox (no protoc needed) and generates the tonic code, with
//! type names so a message's descriptor can be found by its name.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "gofer/v1/gofer.proto",
        "gofer/v1/dispatch.proto",
        "gofer/v1/extension.proto",
        "gofer/v1/raft.proto",
    ];
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile(files, [&root])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("gofer_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    // Type names (`prost::Name`) let a client find a message's descriptor in the set above, as goferctl's
    // `-o json` does.
    let mut config = prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure().compile_fds_with_config(fds, config)?;
    Ok(())
}
