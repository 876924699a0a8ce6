//! Generates Modal's protobuf messages from the descriptor set vendored with the emulator
//! (`emulators/modal/proto/modal.fds.bin`, recovered from the pinned `modal` 1.6.4 wheel), so
//! plugin and emulator share one definition and no protoc is needed.

fn main() {
    let path = "../../emulators/modal/proto/modal.fds.bin";
    println!("cargo:rerun-if-changed={path}");
    let bytes = std::fs::read(path).expect("reading the vendored descriptor set");
    let fds = <prost_types::FileDescriptorSet as prost::Message>::decode(bytes.as_slice())
        .expect("decoding the vendored descriptor set");
    prost_build::Config::new()
        .compile_fds(fds)
        .expect("generating modal's protobuf messages");
}
