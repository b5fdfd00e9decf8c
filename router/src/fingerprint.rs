//! `system_fingerprint`: what must match for two servers to give the same tokens for the same
//! request (see `docs/reproducibility.md`): Wick's version and the revision of its numerics
//! ([`NUMERICS`], raised by any change that can move an output's bits between two builds of
//! one version), the forward path and its matmul kernel, the KV cache's element type (f16 keys
//! and values are rounded), and a checksum of the model's bytes. Computed once at start-up.
//!
//! The checksum is CRC-32 over the model file (or, for a Hugging Face directory, over its
//! files in name order): not a cryptographic hash, but any change of the weights changes it in
//! all but one case in four billion, and it runs at memory speed (about 0.2 s for a 1 GB file
//! already in the page cache).

use crate::backend::{KvDType, NUMERICS};
use std::io::Read;
use std::path::Path;

/// The fingerprint of a server on `model` (`generic`: the device-generic forward path).
pub fn fingerprint(
    model: &Path,
    kernel: &str,
    generic: bool,
    kv: KvDType,
) -> std::io::Result<String> {
    let path = if generic { "generic" } else { kernel };
    Ok(format!(
        "wick-{}-n{NUMERICS}-{path}-{kv}kv-{:08x}",
        env!("CARGO_PKG_VERSION"),
        checksum(model)?
    ))
}

/// CRC-32 of a file, or of a directory's files in name order.
fn checksum(model: &Path) -> std::io::Result<u32> {
    let mut files = Vec::new();
    if model.is_dir() {
        for entry in std::fs::read_dir(model)? {
            let path = entry?.path();
            if path.is_file() {
                files.push(path);
            }
        }
        files.sort();
    } else {
        files.push(model.to_path_buf());
    }
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 8 << 20];
    for f in files {
        let mut file = std::fs::File::open(f)?;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            crc.update(&buf[..n]);
        }
    }
    Ok(crc.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_names_the_version_the_numerics_the_path_the_kv_type_and_the_bytes() {
        let dir = std::env::temp_dir().join(format!("wick-fp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("m.gguf");
        std::fs::write(&file, b"weights").unwrap();
        let f16 = KvDType::F16;
        let a = fingerprint(&file, "avx512vnni", false, f16).unwrap();
        let version = env!("CARGO_PKG_VERSION");
        assert!(
            a.starts_with(&format!("wick-{version}-n{NUMERICS}-avx512vnni-f16kv-")),
            "{a}"
        );
        assert!(fingerprint(&file, "avx512vnni", true, f16)
            .unwrap()
            .contains("-generic-"));
        let f32_kv = fingerprint(&file, "avx512vnni", false, KvDType::F32).unwrap();
        assert!(f32_kv.contains("-f32kv-"), "{f32_kv}");
        std::fs::write(&file, b"weightz").unwrap();
        assert_ne!(fingerprint(&file, "avx512vnni", false, f16).unwrap(), a);
        // A directory's files count, in name order.
        let d = fingerprint(&dir, "x", false, f16).unwrap();
        std::fs::write(dir.join("n.json"), b"{}").unwrap();
        assert_ne!(fingerprint(&dir, "x", false, f16).unwrap(), d);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
