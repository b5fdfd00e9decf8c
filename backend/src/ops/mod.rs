//! Compute kernels behind a module boundary: the quantized matmul ([`linear`]) and the paged
//! attention and KV write ([`attention`]). Each is a candle custom op with a CPU implementation;
//! the model code calls them like any other tensor op.

pub mod attention;
pub mod linear;

pub use attention::{AttentionMeta, KvWrite, PagedAttention};
pub use linear::QWeight;
