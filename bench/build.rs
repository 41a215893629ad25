//! Compiles the benchmark's copy of etcd's Put call (`proto/etcd_kv.proto`) with protox: no protoc needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile(["etcd_kv.proto"], [&root])?;
    tonic_prost_build::configure().build_server(false).compile_fds(fds)?;
    Ok(())
}
