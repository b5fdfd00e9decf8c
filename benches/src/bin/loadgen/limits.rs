//! What `compare` sets its figures against: the machine's memory read bandwidth, measured in the
//! same run (before the first server starts and after the last one stops, because a shared
//! machine's bandwidth moves by a quarter within minutes), and what a token costs the model: the
//! weight bytes a decode step reads and the multiply-adds a prompt token takes, from the GGUF's
//! tensor table.

use std::time::Instant;

/// Bytes the bandwidth test reads per pass: far beyond any cache.
const BUFFER: usize = 1 << 30;

/// Memory read bandwidth in GB/s with `threads` threads: the best of four passes of a sum over a
/// 1 GiB buffer, each thread summing a contiguous share.
pub fn bandwidth_gbs(threads: usize) -> f64 {
    // `vec![1; n]` writes every page, so no pass pays for first touches.
    let buf: Vec<u64> = vec![1; BUFFER / 8];
    let share = buf.len().div_ceil(threads.max(1));
    let mut best = 0f64;
    for _ in 0..4 {
        let start = Instant::now();
        let total: u64 = std::thread::scope(|s| {
            let parts: Vec<_> = buf.chunks(share).map(|c| s.spawn(move || sum(c))).collect();
            parts
                .into_iter()
                .map(|p| p.join().expect("sum thread"))
                .sum()
        });
        let secs = start.elapsed().as_secs_f64();
        // Checked, so the sums cannot be optimised away.
        assert_eq!(total, buf.len() as u64);
        best = best.max(BUFFER as f64 / secs / 1e9);
    }
    best
}

/// A sum in eight independent lanes, so that the adds keep up with the loads.
fn sum(v: &[u64]) -> u64 {
    let mut lanes = [0u64; 8];
    let (chunks, rest) = v.as_chunks::<8>();
    for c in chunks {
        for (l, x) in lanes.iter_mut().zip(c) {
            *l = l.wrapping_add(*x);
        }
    }
    lanes.iter().chain(rest).fold(0, |a, x| a.wrapping_add(*x))
}

/// What one token costs the model in `path` (a GGUF).
pub struct TokenCost {
    /// Weight bytes a batch-1 decode step reads: every tensor but the token embedding (of
    /// which a step reads its tokens' rows only), which counts once as the LM head when the
    /// file has no `output.weight` (tied embeddings).
    pub decode_bytes: u64,
    /// Multiply-adds of the matrices a prompt token goes through (every 2-D tensor but the
    /// embedding and the LM head, which a prompt runs for its last token only).
    pub prefill_macs: u64,
}

pub fn token_cost(path: &str) -> Option<TokenCost> {
    let mut file = std::fs::File::open(path).ok()?;
    let content = wick_backend::gguf::read_content(&mut file, path).ok()?;
    let mut cost = TokenCost {
        decode_bytes: 0,
        prefill_macs: 0,
    };
    let tied = !content.tensor_infos.contains_key("output.weight");
    for (name, info) in &content.tensor_infos {
        let elems = info.shape.elem_count();
        let bytes = elems / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
        let embedding = name == "token_embd.weight";
        if !embedding || tied {
            cost.decode_bytes += bytes as u64;
        }
        if info.shape.rank() == 2 && !embedding && name != "output.weight" {
            cost.prefill_macs += elems as u64;
        }
    }
    Some(cost)
}
