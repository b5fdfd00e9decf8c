//! Compute kernels behind a module boundary: the matmul over weights in their stored type
//! ([`linear`], with Wick's own kernels for Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q5_K and Q6_K in
//! [`qgemm`]) and the paged
//! attention and KV write ([`attention`]), and the small per-token ops ([`fused`]). Each is a candle custom op with a CPU implementation;
//! the model code calls them like any other tensor op.

pub mod attention;
pub mod fused;
pub mod linear;
pub mod qgemm;

pub use attention::{AttentionMeta, KvWrite, PagedAttention};
pub use linear::QWeight;
