//! Wick's CPU kernels behind a module boundary: the matmul over weights in their stored type
//! ([`linear`]'s `QWeight`, with Wick's own kernels for Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q5_K and
//! Q6_K in [`qgemm`]), the paged attention and KV write ([`attention`]), the small per-token
//! ops ([`fused`]), and the elementary functions they and the sampler share ([`math`]). The
//! matmuls and per-token ops work on plain `f32` buffers, called directly by the CPU model; the
//! attention and KV write are candle custom ops (`CustomOp3`, `InplaceOp2`) on the cache
//! tensors, and `QWeight` is also a `CustomOp1` for the reference code that multiplies tensors.

pub mod attention;
pub mod fused;
pub mod linear;
pub mod math;
pub mod qgemm;

pub use attention::{AttentionMeta, KvWrite, PagedAttention};
pub use linear::QWeight;
