//! Generates the protobuf messages of modal's two gRPC services from the FileDescriptorSet
//! vendored in `proto/` (no protoc needed). The plugin `plugins/modal` compiles the same file.

fn main() {
    let path = "proto/modal.fds.bin";
    println!("cargo:rerun-if-changed={path}");
    let bytes = std::fs::read(path).expect("reading the vendored descriptor set");
    let fds = <prost_types::FileDescriptorSet as prost::Message>::decode(bytes.as_slice())
        .expect("decoding the vendored descriptor set");
    prost_build::Config::new()
        .compile_fds(fds)
        .expect("generating modal's protobuf messages");
}
