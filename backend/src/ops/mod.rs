//! Compute kernels behind a module boundary: the quantized matmul ([`linear`], with the SIMD Q4_1
//! kernel in [`q4_1`]) and the paged
//! attention and KV write ([`attention`]). Each is a candle custom op with a CPU implementation;
//! the model code calls them like any other tensor op.

pub mod attention;
pub mod linear;
pub mod q4_1;

pub use attention::{AttentionMeta, KvWrite, PagedAttention};
pub use linear::QWeight;
