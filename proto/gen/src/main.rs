//! Regenerates `src/proto/ferry.v1.rs` from `proto/ferry.proto` without a system `protoc`:
//! `protox` parses the .proto into a descriptor set and `prost-build` writes the Rust types.
//! Usage (from the repository root): `cargo run --manifest-path proto/gen/Cargo.toml -- proto
//! src/proto`. Ferry checks the output in, so its own build needs neither crate.

fn main() {
    let proto_dir = std::env::args().nth(1).expect("proto dir");
    let out = std::env::args().nth(2).expect("out dir");
    let fds = protox::compile([format!("{proto_dir}/ferry.proto")], [proto_dir.as_str()]).expect("compile");
    let mut config = prost_build::Config::new();
    config.out_dir(&out);
    config.compile_fds(fds).expect("codegen");
}
