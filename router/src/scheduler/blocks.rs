//! KV block accounting: which of the backend's cache blocks are free.
//!
//! All-or-nothing allocation from a free list; blocks come back when their sequence finishes, is
//! cancelled or is preempted. Owned by the scheduler task alone. Cost: O(n) in the blocks moved.

use wick_proto::BlockId;

#[derive(Debug)]
pub struct BlockAllocator {
    free: Vec<BlockId>,
    total: usize,
}

impl BlockAllocator {
    pub fn new(total: usize) -> Self {
        // Hand out low ids first: pop() takes from the end.
        BlockAllocator {
            free: (0..total as BlockId).rev().collect(),
            total,
        }
    }

    /// `n` blocks, or `None` (and nothing taken) when fewer are free.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if n > self.free.len() {
            return None;
        }
        let at = self.free.len() - n;
        let mut blocks = self.free.split_off(at);
        blocks.reverse();
        Some(blocks)
    }

    /// Returns blocks to the free list.
    pub fn release(&mut self, blocks: Vec<BlockId>) {
        debug_assert!(self.free.len() + blocks.len() <= self.total);
        self.free.extend(blocks.into_iter().rev());
    }

    pub fn free(&self) -> usize {
        self.free.len()
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// Fraction of blocks held by sequences.
    pub fn usage(&self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        (self.total - self.free.len()) as f64 / self.total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_is_all_or_nothing() {
        let mut a = BlockAllocator::new(4);
        assert_eq!(a.allocate(3), Some(vec![0, 1, 2]));
        assert_eq!(a.allocate(2), None);
        assert_eq!(a.free(), 1);
        assert_eq!(a.allocate(1), Some(vec![3]));
        assert_eq!(a.usage(), 1.0);
    }

    #[test]
    fn released_blocks_are_reused() {
        let mut a = BlockAllocator::new(3);
        let b = a.allocate(2).unwrap();
        a.release(b);
        assert_eq!(a.free(), 3);
        let mut all = a.allocate(3).unwrap();
        all.sort();
        assert_eq!(all, vec![0, 1, 2]);
    }
}
