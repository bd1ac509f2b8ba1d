//! Compiles `proto/strata.proto` with protox (pure Rust; no protoc) and
//! generates the prost messages and tonic client and server (with the
//! `grpc` feature, on by default).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    #[cfg(feature = "grpc")]
    {
        let fds = protox::compile(["strata.proto", "raft.proto"], ["proto"])?;
        tonic_prost_build::configure()
            .build_server(true)
            .build_client(true)
            // Batches travel as `bytes::Bytes`: no copy between the socket and the log.
            .bytes(".")
            .compile_fds(fds)?;
    }
    Ok(())
}
