//! Compile every `.proto` under the workspace's `proto/` with protox (pure Rust: no system
//! protoc), write the encoded file descriptor set for reflection, and generate prost/tonic code.

use std::path::{Path, PathBuf};

use prost::Message;

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    // A directory's own mtime changes when a file is added to it (a new .proto).
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let root = root.canonicalize().expect("proto/ directory next to crates/");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    collect(&root.join("clm"), &mut files);
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }

    let fds = protox::compile(&files, [&root]).unwrap_or_else(|e| panic!("proto compile failed: {e:?}"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    std::fs::write(out.join("clm_descriptor.bin"), fds.encode_to_vec()).expect("write descriptor set");

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::codec::ProstCodec")
        .compile_fds(fds)
        .expect("generate code");
}
