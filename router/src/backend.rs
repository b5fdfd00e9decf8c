//! Everything the router takes from `wick_backend`, named in one place (no other router module
//! names that crate; a test below holds it to that).
//!
//! What crosses at run time is `wick_proto`'s plain messages (steps, generations, model facts),
//! over the worker handle [`Backend`]. Three things are used in-process instead, on purpose:
//! - **The tokenizer** ([`load_tokenizer`]): validation tokenizes on the HTTP side, and the
//!   router is the only reader of the tokenizer file (the worker never needs one).
//! - **The grammar compiler** ([`Grammars`]) and the compiled [`Constraint`] it hands to the
//!   worker through [`Backend::constrain_async`]: a grammar is compiled during validation,
//!   because a grammar that does not compile must be a 400 before anything is queued, and a
//!   compile (up to `--grammar-compile-timeout`) on the worker thread would stall every running
//!   sequence's next step. So the compiled matcher, not a spec, crosses to the worker: it is
//!   built once per request, cloned per choice, and owned by the worker from then on.
//! - **Start-up facts**: the matmul kernel chosen for this CPU (logged when ready), the
//!   numerics' revision ([`NUMERICS`], in `system_fingerprint`), and [`release_free_heap`].

pub use wick_backend::grammar::bounds::SourceLimits;
pub use wick_backend::grammar::{
    close_objects, Constraint, GrammarError, GrammarLimits, GrammarSpec, Grammars,
};
pub use wick_backend::tokenizer::{load_tokenizer, TokenizerInfo};
pub use wick_backend::{
    release_free_heap, Backend, BackendConfig, BackendError, DeviceSpec, KvDType, LoadError,
    NUMERICS,
};

/// The name of the quantized-matmul kernel this CPU runs (`avx512-vnni`, `avx2`, ...).
pub fn matmul_kernel() -> &'static str {
    wick_backend::ops::qgemm::selected().name()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn only_this_module_names_the_backend_crate() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let offenders: Vec<_> = files
            .iter()
            .filter(|p| !p.ends_with("backend.rs"))
            .filter(|p| {
                let text = std::fs::read_to_string(p).unwrap();
                text.contains(concat!("wick_", "backend"))
            })
            .collect();
        assert!(files.len() > 20, "found only {} files", files.len());
        assert!(offenders.is_empty(), "{offenders:?}");
    }

    #[test]
    fn validation_does_not_import_the_scheduler() {
        // The scheduler takes validation's `ValidRequest`; the other way would be a cycle.
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let validation = std::fs::read_to_string(src.join("validation/mod.rs")).unwrap();
        assert!(validation.contains("crate::request::"));
        assert!(!validation.contains("crate::scheduler"));
    }
}
