//! Compiles the OpAMP `.proto` files with protox (pure Rust), so building
//! needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["opamp/v1/opamp.proto", "opamp/v1/anyvalue.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let mut config = prost_build::Config::new();
    // BTreeMap keeps map iteration (and so anything hashed from it) deterministic.
    config.btree_map(["."]);
    config.compile_fds(fds)?;
    Ok(())
}
