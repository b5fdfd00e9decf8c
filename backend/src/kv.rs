//! The paged KV cache storage: per layer, one K and one V tensor of shape
//! `[num_blocks, block_size, kv_heads, head_dim]` (f32).
//!
//! The backend owns the storage only; which sequence owns which block is the router's business.
//! Block tables arriving with a step are checked against `num_blocks` before use. Sizing: one block
//! costs `2 * layers * block_size * kv_heads * head_dim * 4` bytes, and the cache takes as many
//! blocks as fit the memory budget.

use crate::config::ModelConfig;
use crate::error::LoadError;
use candle_core::{DType, Device, Tensor};

pub struct KvCache {
    pub(crate) k: Vec<Tensor>,
    pub(crate) v: Vec<Tensor>,
    block_size: usize,
    num_blocks: usize,
}

impl KvCache {
    /// Bytes one block takes across all layers, K and V.
    pub fn block_bytes(cfg: &ModelConfig, block_size: usize) -> usize {
        2 * cfg.num_layers * block_size * cfg.kv_dim() * DType::F32.size_in_bytes()
    }

    /// A cache of as many blocks as `budget_bytes` holds (at least one).
    pub fn with_budget(
        cfg: &ModelConfig,
        block_size: usize,
        budget_bytes: usize,
        device: &Device,
    ) -> Result<Self, LoadError> {
        if block_size == 0 {
            return Err(LoadError::invalid("kv_block_size", "must be at least 1"));
        }
        let num_blocks = budget_bytes / Self::block_bytes(cfg, block_size);
        if num_blocks == 0 {
            return Err(LoadError::KvBudget {
                budget_bytes,
                blocks: 0,
                needed: 1,
            });
        }
        Self::with_blocks(cfg, block_size, num_blocks, device)
    }

    /// A cache of exactly `num_blocks` blocks.
    pub fn with_blocks(
        cfg: &ModelConfig,
        block_size: usize,
        num_blocks: usize,
        device: &Device,
    ) -> Result<Self, LoadError> {
        let shape = (num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim);
        let alloc = || Tensor::zeros(shape, DType::F32, device);
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
