//! KV block accounting with automatic prefix caching.
//!
//! Blocks are reference counted. A full block can be registered under the hash of its chain
//! (parent block's hash, its own token ids); a later sequence whose tokens walk the same chain
//! takes references on those blocks instead of recomputing them. A block nobody references stays
//! cached (evictable) and is reclaimed least recently released first when fresh blocks are needed.
//!
//! Invariants: a block with a non-zero count is never handed out again; a block is in exactly one
//! of {referenced, evictable, free}; `by_hash` only names blocks whose `cached` entry matches.
//! Owned by the scheduler task alone. Costs: lookup O(blocks of the prompt); allocate and release
//! O(blocks moved * log evictable).

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use wick_proto::BlockId;

/// Hash of a full block given its parent's hash (0 for the first block).
pub fn chain_hash(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

/// What a cached block holds: its chain hash and its tokens (compared on lookup, so a hash
/// collision can never hand out the wrong K/V).
#[derive(Debug, Clone)]
struct Cached {
    hash: u64,
    parent: u64,
    tokens: Vec<u32>,
}

#[derive(Debug)]
pub struct BlockPool {
    block_size: usize,
    caching: bool,
    refs: Vec<u32>,
    cached: Vec<Option<Cached>>,
    /// Blocks with no content worth keeping.
    free: Vec<BlockId>,
    /// Cached blocks nobody references, by release tick (oldest first).
    evictable: BTreeMap<u64, BlockId>,
    /// Release tick of each evictable block (to find it in `evictable`).
    released_at: Vec<u64>,
    by_hash: HashMap<u64, BlockId>,
    tick: u64,
}

impl BlockPool {
    pub fn new(total: usize, block_size: usize, caching: bool) -> Self {
        BlockPool {
            block_size,
            caching,
            refs: vec![0; total],
            cached: vec![None; total],
            // Hand out low ids first: pop() takes from the end.
            free: (0..total as BlockId).rev().collect(),
            evictable: BTreeMap::new(),
            released_at: vec![0; total],
            by_hash: HashMap::new(),
            tick: 0,
        }
    }

    pub fn total(&self) -> usize {
        self.refs.len()
    }

    /// Blocks that can be handed out now (free or evictable).
    pub fn available(&self) -> usize {
        self.free.len() + self.evictable.len()
    }

    /// Fraction of blocks referenced by sequences (evictable cached blocks count as free).
    pub fn usage(&self) -> f64 {
        let total = self.total();
        if total == 0 {
            return 0.0;
        }
        (total - self.available()) as f64 / total as f64
    }

    fn take_ref(&mut self, b: BlockId) {
        if self.refs[b as usize] == 0 {
            self.evictable.remove(&self.released_at[b as usize]);
        }
        self.refs[b as usize] += 1;
    }

    /// The longest chain of cached full blocks that starts `tokens`, with a reference taken on
    /// each; also returns the chain's hashes.
    pub fn lookup(&mut self, tokens: &[u32]) -> (Vec<BlockId>, Vec<u64>) {
        let (mut blocks, mut hashes) = (Vec::new(), Vec::new());
        if !self.caching {
            return (blocks, hashes);
        }
        let mut parent = 0;
        for chunk in tokens.chunks_exact(self.block_size) {
            let hash = chain_hash(parent, chunk);
            let Some(&b) = self.by_hash.get(&hash) else {
                break;
            };
            let same = self.cached[b as usize]
                .as_ref()
                .is_some_and(|c| c.parent == parent && c.tokens == chunk);
            if !same {
                break;
            }
            self.take_ref(b);
            blocks.push(b);
            hashes.push(hash);
            parent = hash;
        }
        (blocks, hashes)
    }

    /// `n` fresh blocks (referenced once), evicting the least recently released cached blocks if
    /// needed; `None` (and nothing taken) when fewer than `n` are available.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if n > self.available() {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let b = match self.free.pop() {
                Some(b) => b,
                None => {
                    let (_, b) = self.evictable.pop_first().expect("available() counted it");
                    if let Some(c) = self.cached[b as usize].take() {
                        self.by_hash.remove(&c.hash);
                    }
                    b
                }
            };
            self.refs[b as usize] = 1;
            out.push(b);
        }
        Some(out)
    }

    /// Drops one reference on each block; unreferenced cached blocks become evictable, the others
    /// free.
    pub fn release(&mut self, blocks: &[BlockId]) {
        for &b in blocks.iter().rev() {
            let r = &mut self.refs[b as usize];
            debug_assert!(*r > 0, "block {b} released more often than taken");
            *r -= 1;
            if *r > 0 {
                continue;
            }
            if self.cached[b as usize].is_some() {
                self.tick += 1;
                self.released_at[b as usize] = self.tick;
                self.evictable.insert(self.tick, b);
            } else {
                self.free.push(b);
            }
        }
    }

    /// Records that `block` now holds the full block `tokens` whose chain hash is `hash`. A block
    /// with the same content already cached keeps its place; this one stays private.
    pub fn register(&mut self, block: BlockId, parent: u64, hash: u64, tokens: &[u32]) {
        if !self.caching || self.by_hash.contains_key(&hash) {
            return;
        }
        self.by_hash.insert(hash, block);
        self.cached[block as usize] = Some(Cached {
            hash,
            parent,
            tokens: tokens.to_vec(),
        });
    }

    /// References held on `block` (for tests and invariants).
    pub fn refs(&self, block: BlockId) -> u32 {
        self.refs[block as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Allocates blocks for `tokens` and registers each full one, like a finished prefill.
    fn fill(pool: &mut BlockPool, tokens: &[u32]) -> Vec<BlockId> {
        let bs = pool.block_size;
        let blocks = pool.allocate(tokens.len().div_ceil(bs)).unwrap();
        let mut parent = 0;
        for (b, chunk) in blocks.iter().zip(tokens.chunks_exact(bs)) {
            let h = chain_hash(parent, chunk);
            pool.register(*b, parent, h, chunk);
            parent = h;
        }
        blocks
    }

    #[test]
    fn allocation_is_all_or_nothing() {
        let mut p = BlockPool::new(4, 2, true);
        assert_eq!(p.allocate(3), Some(vec![0, 1, 2]));
        assert_eq!(p.allocate(2), None);
        assert_eq!(p.available(), 1);
        assert_eq!(p.allocate(1), Some(vec![3]));
        assert_eq!(p.usage(), 1.0);
    }

    #[test]
    fn a_shared_prefix_is_found_and_referenced() {
        let mut p = BlockPool::new(8, 2, true);
        let a = fill(&mut p, &[1, 2, 3, 4, 5]);
        // Same first two blocks, different tail: the two full blocks are shared.
        let (hit, _) = p.lookup(&[1, 2, 3, 4, 9, 9]);
        assert_eq!(hit, a[..2].to_vec());
        assert_eq!((p.refs(a[0]), p.refs(a[1]), p.refs(a[2])), (2, 2, 1));
        // A prefix that ends mid-block only matches its full blocks.
        let (hit, _) = p.lookup(&[1, 2, 3]);
        assert_eq!(hit, vec![a[0]]);
        // A different first block matches nothing, even if later blocks are equal.
        assert_eq!(p.lookup(&[7, 7, 3, 4]).0, Vec::<BlockId>::new());
    }

    #[test]
    fn released_cached_blocks_stay_until_evicted_least_recent_first() {
        let mut p = BlockPool::new(4, 1, true);
        let a = fill(&mut p, &[1]);
        let b = fill(&mut p, &[2]);
        let c = fill(&mut p, &[3]);
        p.release(&b);
        p.release(&a);
        p.release(&c);
        assert_eq!(p.available(), 4);
        assert_eq!(p.usage(), 0.0);
        // One free block, then eviction in release order: b, then a.
        assert_eq!(p.allocate(2).unwrap(), vec![3, b[0]]);
        assert_eq!(p.lookup(&[2]).0, Vec::<BlockId>::new());
        assert_eq!(p.lookup(&[1]).0, a);
        assert_eq!(p.lookup(&[3]).0, c);
    }

    #[test]
    fn a_referenced_block_is_never_evicted() {
        let mut p = BlockPool::new(2, 1, true);
        let a = fill(&mut p, &[1]);
        let (hit, _) = p.lookup(&[1]);
        assert_eq!(hit, a);
        p.release(&a); // the first owner is done; the second still holds it
        assert_eq!(p.allocate(1).unwrap(), vec![1]);
        assert_eq!(p.allocate(1), None);
        assert_eq!(p.refs(a[0]), 1);
    }

    #[test]
    fn nothing_leaks_after_finished_cancelled_and_preempted_sequences() {
        let mut p = BlockPool::new(16, 4, true);
        let prompt: Vec<u32> = (0..10).collect();
        let finished = fill(&mut p, &prompt);
        let (shared, _) = p.lookup(&prompt);
        let mut cancelled = shared.clone();
        cancelled.extend(p.allocate(1).unwrap());
        let preempted = fill(&mut p, &[50; 9]);
        p.release(&finished);
        p.release(&cancelled);
        p.release(&preempted);
        assert_eq!(p.available(), 16);
        assert!((0..16).all(|b| p.refs(b) == 0));
        // The preempted sequence's full blocks are still cached for its return.
        assert_eq!(p.lookup(&[50; 9]).0.len(), 2);
    }

    #[test]
    fn caching_off_shares_nothing() {
        let mut p = BlockPool::new(4, 1, false);
        let a = fill(&mut p, &[1]);
        p.release(&a);
        assert_eq!(p.lookup(&[1]).0, Vec::<BlockId>::new());
        assert_eq!(p.available(), 4);
    }

    #[test]
    fn duplicate_content_keeps_the_first_block_cached() {
        let mut p = BlockPool::new(4, 1, true);
        let a = fill(&mut p, &[5]);
        let b = fill(&mut p, &[5]);
        p.release(&b);
        // b was never registered, so it went back to the free list.
        assert_eq!(p.lookup(&[5]).0, a);
    }
}
