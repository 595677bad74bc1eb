//! Generates Rust types from `proto/**/*.proto`.
//!
//! `protox` parses the .proto files in pure Rust, so the build needs no
//! `protoc` binary on the machine; `prost-build` turns the descriptors into code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "ferrite/sync/v1/sync.proto",
        "org/eclipse/tahu/sparkplug_b.proto",
        "perftools/profiles/profile.proto",
    ];
    let descriptors = protox::compile(files, ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
