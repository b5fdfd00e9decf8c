//! The paged KV cache storage: per layer, one K and one V tensor of shape
//! `[num_blocks, kv_heads, block_size, head_dim]`, in f32 or f16 ([`KvDType`]); on the CPU in
//! huge pages where the system gives them ([`memory`]). Within a block each KV head's rows are
//! contiguous, so attention, which reads one head's keys and values per task, streams whole
//! runs of memory instead of every `kv_heads`-th row; [`CacheRows`] says where each row is, for
//! every reader and writer of the cache.
//!
//! The backend owns the storage only; which sequence owns which block is the router's business.
//! Block tables arriving with a step are checked against `num_blocks` before use. Sizing: one block
//! costs `2 * layers * block_size * kv_heads * head_dim * (4 or 2)` bytes, and the caches that
//! share block ids (the model's, a draft model's) take as many blocks as fit the memory budget.

use crate::config::ModelConfig;
use crate::error::LoadError;
use crate::memory;
use candle_core::{DType, Device, Tensor};
use half::f16;

/// Where a cache's rows (of `head_dim` elements each) are: KV head `h` of slot
/// `block * block_size + offset` is row `(block * kv_heads + h) * block_size + offset`.
#[derive(Debug, Clone, Copy)]
pub struct CacheRows {
    pub block_size: usize,
    pub kv_heads: usize,
}

impl CacheRows {
    /// The row of KV head `head` at `offset` in block `block`.
    #[inline]
    pub fn row(self, block: usize, head: usize, offset: usize) -> usize {
        (block * self.kv_heads + head) * self.block_size + offset
    }

    /// Slot `slot`'s rows, head by head.
    pub fn of_slot(self, slot: usize) -> impl Iterator<Item = usize> {
        let (block, offset) = (slot / self.block_size, slot % self.block_size);
        (0..self.kv_heads).map(move |h| self.row(block, h, offset))
    }
}

/// The element type of the cache. f16 (the default, as llama.cpp's) holds twice the tokens in
/// the same memory and halves the bytes attention reads; keys and values are rounded to f16 when
/// written and widened to f32 when read. f32 keeps them as computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvDType {
    F32,
    #[default]
    F16,
}

impl KvDType {
    fn dtype(self) -> DType {
        match self {
            KvDType::F32 => DType::F32,
            KvDType::F16 => DType::F16,
        }
    }
}

impl std::str::FromStr for KvDType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(KvDType::F32),
            "f16" => Ok(KvDType::F16),
            other => Err(format!("`{other}`: expected f32 or f16")),
        }
    }
}

impl std::fmt::Display for KvDType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvDType::F32 => "f32",
            KvDType::F16 => "f16",
        })
    }
}

pub struct KvCache {
    pub(crate) k: Vec<Tensor>,
    pub(crate) v: Vec<Tensor>,
    block_size: usize,
    num_blocks: usize,
}

impl KvCache {
    /// Bytes one block takes across all layers, K and V.
    pub fn block_bytes(cfg: &ModelConfig, block_size: usize, dtype: KvDType) -> usize {
        2 * cfg.num_layers * block_size * cfg.kv_dim() * dtype.dtype().size_in_bytes()
    }

    /// How many blocks `budget_bytes` buys at `per_block` bytes a block (the blocks of every
    /// cache that shares the block ids: the model's, and a draft model's): at least one.
    pub fn blocks_in_budget(
        budget_bytes: usize,
        block_size: usize,
        per_block: usize,
    ) -> Result<usize, LoadError> {
        if block_size == 0 {
            return Err(LoadError::invalid("kv_block_size", "must be at least 1"));
        }
        match budget_bytes / per_block.max(1) {
            0 => Err(LoadError::KvBudget {
                budget_bytes,
                blocks: 0,
                needed: 1,
            }),
            blocks => Ok(blocks),
        }
    }

    /// A cache of exactly `num_blocks` blocks.
    pub fn with_blocks(
        cfg: &ModelConfig,
        block_size: usize,
        num_blocks: usize,
        dtype: KvDType,
        device: &Device,
    ) -> Result<Self, LoadError> {
        let shape = (num_blocks, cfg.num_kv_heads, block_size, cfg.head_dim);
        // On the CPU in huge pages where the system gives them (read by every step).
        let n = num_blocks * block_size * cfg.num_kv_heads * cfg.head_dim;
        let alloc = || match (device, dtype) {
            (Device::Cpu, KvDType::F16) => {
                Tensor::from_vec(memory::filled(n, f16::ZERO), shape, device)
            }
            (Device::Cpu, KvDType::F32) => Tensor::from_vec(memory::filled(n, 0f32), shape, device),
            _ => Tensor::zeros(shape, dtype.dtype(), device),
        };
        let k = (0..cfg.num_layers)
            .map(|_| alloc())
            .collect::<Result<_, _>>()?;
        let v = (0..cfg.num_layers)
            .map(|_| alloc())
            .collect::<Result<_, _>>()?;
        Ok(KvCache {
            k,
            v,
            block_size,
            num_blocks,
        })
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }
}
