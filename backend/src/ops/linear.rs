//! Weight matrices in their stored type (GGUF block quantizations or dense f32/f16/bf16) and the
//! CPU matmul that applies them to a batch of activation rows.
//!
//! Q4_0, Q4_1 and Q8_0 (the types of SmolLM2's GGUFs and the common 4/8-bit ones) are repacked at
//! load for Wick's kernels in [`super::qgemm`], and so are Q5_0, Q4_K, Q5_K and Q6_K (what Q4_K_M
//! and Q5_K_M GGUFs such as Qwen2.5's and Gemma 3's are made of).
//! [`QWeight::matmul_many`] applies several of them to one input with a single activation
//! quantization and one parallel pass.
//! Other types go through candle's `vec_dot` per (row, column), the portable path.
//!
//! Batch invariance: every output element is one dot product of one activation row against one
//! weight row, computed in a fixed order whatever the number of rows, the tiling or the thread
//! that runs it. So a row's result never depends on what else is in the batch.

use super::qgemm::{self, Format, Packed, PackedRef, QActs};
use super::qgemm::{Q4_0x8, Q4_1x8, Q4_Kx8, Q5_0x8, Q5_Kx8, Q6_Kx8, Q8_0x8};
use crate::error::LoadError;
use candle_core::backend::BackendStorage;
use candle_core::quantized::k_quants::{BlockQ2K, BlockQ3K, BlockQ5_1, GgmlType};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use half::{bf16, f16};

/// The stored elements of a weight matrix, row-major, `rows * cols / block_size` blocks.
enum Blocks {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    Q4_0(Packed<Q4_0x8>),
    Q4_1(Packed<Q4_1x8>),
    Q5_0(Packed<Q5_0x8>),
    Q5_1(Vec<BlockQ5_1>),
    Q8_0(Packed<Q8_0x8>),
    Q2K(Vec<BlockQ2K>),
    Q3K(Vec<BlockQ3K>),
    Q4K(Packed<Q4_Kx8>),
    Q5K(Packed<Q5_Kx8>),
    Q6K(Packed<Q6_Kx8>),
}

/// Runs `$body` with `$v` bound to the typed row-major block slice of an unpacked `$blocks`,
/// or `$packed` with `$p` bound to a packed matrix.
macro_rules! with_blocks {
    ($blocks:expr, $v:ident => $body:expr, $p:ident => $packed:expr) => {
        match $blocks {
            Blocks::F32($v) => $body,
            Blocks::F16($v) => $body,
            Blocks::BF16($v) => $body,
            Blocks::Q5_1($v) => $body,
            Blocks::Q2K($v) => $body,
            Blocks::Q3K($v) => $body,
            Blocks::Q4K($p) => $packed,
            Blocks::Q5K($p) => $packed,
            Blocks::Q6K($p) => $packed,
            Blocks::Q4_0($p) => $packed,
            Blocks::Q4_1($p) => $packed,
            Blocks::Q5_0($p) => $packed,
            Blocks::Q8_0($p) => $packed,
        }
    };
}

/// A `rows x cols` weight matrix (`y = x W^T`), kept in its stored type.
pub struct QWeight {
    rows: usize,
    cols: usize,
    blocks: Blocks,
}

impl std::fmt::Debug for QWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QWeight({}x{} {})",
            self.rows,
            self.cols,
            self.dtype_name()
        )
    }
}

/// Copies raw GGUF bytes into a typed block vector.
fn typed_blocks<T: GgmlType>(bytes: &[u8]) -> Vec<T> {
    let size = std::mem::size_of::<T>();
    let n = bytes.len() / size;
    let mut out: Vec<T> = Vec::with_capacity(n);
    // SAFETY: every GgmlType is a `repr(C)` plain-old-data block (floats and byte arrays), so any
    // byte pattern is a valid value; `out` has capacity for `n` blocks and the copy fills them all.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.as_mut_ptr() as *mut u8, n * size);
        out.set_len(n);
    }
    out
}

impl QWeight {
    /// Takes a GGUF tensor as stored. `cols` must be a whole number of the type's blocks.
    pub fn from_qtensor(name: &str, qt: &QTensor) -> Result<Self, LoadError> {
        let (rows, cols) = qt.shape().dims2().map_err(|_| LoadError::TensorShape {
            name: name.into(),
            found: qt.shape().dims().to_vec(),
            expected: vec![0, 0],
        })?;
        let dtype = qt.dtype();
        if cols % dtype.block_size() != 0 {
            return Err(LoadError::UnsupportedTensorType {
                name: name.into(),
                dtype: format!("{dtype:?}"),
                reason: format!(
                    "rows of {cols} elements are not whole blocks of {}",
                    dtype.block_size()
                ),
            });
        }
        let data = qt.data()?;
        let kb = cols / dtype.block_size();
        let blocks = match dtype {
            GgmlDType::F32 => Blocks::F32(typed_blocks(&data)),
            GgmlDType::F16 => Blocks::F16(typed_blocks(&data)),
            GgmlDType::BF16 => Blocks::BF16(typed_blocks(&data)),
            GgmlDType::Q4_0 => Blocks::Q4_0(Packed::pack(&typed_blocks(&data), rows, kb)),
            GgmlDType::Q4_1 => Blocks::Q4_1(Packed::pack(&typed_blocks(&data), rows, kb)),
            GgmlDType::Q5_0 => Blocks::Q5_0(Packed::pack(&typed_blocks(&data), rows, kb)),
            GgmlDType::Q5_1 => Blocks::Q5_1(typed_blocks(&data)),
            GgmlDType::Q8_0 => Blocks::Q8_0(Packed::pack(&typed_blocks(&data), rows, kb)),
            GgmlDType::Q2K => Blocks::Q2K(typed_blocks(&data)),
            GgmlDType::Q3K => Blocks::Q3K(typed_blocks(&data)),
            GgmlDType::Q4K => Blocks::Q4K(Packed::pack(&typed_blocks(&data), rows, kb)),
            GgmlDType::Q5K => Blocks::Q5K(Packed::pack(&typed_blocks(&data), rows, kb)),
            GgmlDType::Q6K => Blocks::Q6K(Packed::pack(&typed_blocks(&data), rows, kb)),
            GgmlDType::Q8_1 | GgmlDType::Q8K => {
                return Err(LoadError::UnsupportedTensorType {
                    name: name.into(),
                    dtype: format!("{dtype:?}"),
                    reason: "an activation-only type".into(),
                })
            }
        };
        Ok(QWeight { rows, cols, blocks })
    }

    /// Takes a dense 2-D tensor (f32, f16 or bf16), keeping its type.
    pub fn from_dense(name: &str, t: &Tensor) -> Result<Self, LoadError> {
        let (rows, cols) = t.dims2().map_err(|_| LoadError::TensorShape {
            name: name.into(),
            found: t.dims().to_vec(),
            expected: vec![0, 0],
        })?;
        let flat = t.flatten_all()?;
        let blocks = match t.dtype() {
            DType::F32 => Blocks::F32(flat.to_vec1()?),
            DType::F16 => Blocks::F16(flat.to_vec1()?),
            DType::BF16 => Blocks::BF16(flat.to_vec1()?),
            other => {
                return Err(LoadError::UnsupportedTensorType {
                    name: name.into(),
                    dtype: format!("{other:?}"),
                    reason: "weights must be f32, f16 or bf16".into(),
                })
            }
        };
        Ok(QWeight { rows, cols, blocks })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The stored type, lower case (`q4_1`, `f32`, ...).
    pub fn dtype_name(&self) -> &'static str {
        match &self.blocks {
            Blocks::F32(_) => "f32",
            Blocks::F16(_) => "f16",
            Blocks::BF16(_) => "bf16",
            Blocks::Q4_0(_) => "q4_0",
            Blocks::Q4_1(_) => "q4_1",
            Blocks::Q5_1(_) => "q5_1",
            Blocks::Q5_0(_) => "q5_0",
            Blocks::Q8_0(_) => "q8_0",
            Blocks::Q2K(_) => "q2_k",
            Blocks::Q3K(_) => "q3_k",
            Blocks::Q4K(_) => "q4_k",
            Blocks::Q5K(_) => "q5_k",
            Blocks::Q6K(_) => "q6_k",
        }
    }

    /// Row `row` as f32 (an embedding lookup).
    pub fn row_to_f32(&self, row: usize, out: &mut [f32]) {
        with_blocks!(&self.blocks, v => {
            let per_row = v.len() / self.rows;
            GgmlType::to_float(&v[row * per_row..(row + 1) * per_row], out)
        }, p => GgmlType::to_float(&p.unpack_row(row), out))
    }

    /// The whole matrix as f32, row-major.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, chunk) in out.chunks_mut(self.cols).enumerate() {
            self.row_to_f32(r, chunk);
        }
        out
    }

    /// The whole matrix as a dense `(rows, cols)` f32 tensor on `device`.
    pub fn to_tensor(&self, device: &candle_core::Device) -> candle_core::Result<Tensor> {
        Tensor::from_vec(self.to_f32_vec(), (self.rows, self.cols), device)
    }

    /// The same matrix dequantized to f32 (for reference runs).
    pub fn dequantized(&self) -> QWeight {
        QWeight {
            rows: self.rows,
            cols: self.cols,
            blocks: Blocks::F32(self.to_f32_vec()),
        }
    }

    /// Reorders rows: row `i` of the result is row `perm[i]` of `self`.
    pub fn permute_rows(self, perm: &[usize]) -> QWeight {
        debug_assert_eq!(perm.len(), self.rows);
        fn apply<T: Clone>(v: Vec<T>, perm: &[usize]) -> Vec<T> {
            let per_row = v.len() / perm.len();
            perm.iter()
                .flat_map(|&src| v[src * per_row..(src + 1) * per_row].iter().cloned())
                .collect()
        }
        fn repack<F: Format>(p: Packed<F>, perm: &[usize]) -> Packed<F>
        where
            F::Src: Clone,
        {
            Packed::pack(&apply(p.unpack(), perm), p.rows, p.kb)
        }
        let blocks = match self.blocks {
            Blocks::F32(v) => Blocks::F32(apply(v, perm)),
            Blocks::F16(v) => Blocks::F16(apply(v, perm)),
            Blocks::BF16(v) => Blocks::BF16(apply(v, perm)),
            Blocks::Q4_0(p) => Blocks::Q4_0(repack(p, perm)),
            Blocks::Q4_1(p) => Blocks::Q4_1(repack(p, perm)),
            Blocks::Q5_1(v) => Blocks::Q5_1(apply(v, perm)),
            Blocks::Q5_0(p) => Blocks::Q5_0(repack(p, perm)),
            Blocks::Q8_0(p) => Blocks::Q8_0(repack(p, perm)),
            Blocks::Q2K(v) => Blocks::Q2K(apply(v, perm)),
            Blocks::Q3K(v) => Blocks::Q3K(apply(v, perm)),
            Blocks::Q4K(p) => Blocks::Q4K(repack(p, perm)),
            Blocks::Q5K(p) => Blocks::Q5K(repack(p, perm)),
            Blocks::Q6K(p) => Blocks::Q6K(repack(p, perm)),
        };
        QWeight { blocks, ..self }
    }

    /// The matrix as Wick's kernels take it, for the types they handle.
    fn packed(&self) -> Option<PackedRef<'_>> {
        match &self.blocks {
            Blocks::Q4_0(p) => Some(PackedRef::Q4_0(p)),
            Blocks::Q4_1(p) => Some(PackedRef::Q4_1(p)),
            Blocks::Q5_0(p) => Some(PackedRef::Q5_0(p)),
            Blocks::Q8_0(p) => Some(PackedRef::Q8_0(p)),
            Blocks::Q4K(p) => Some(PackedRef::Q4K(p)),
            Blocks::Q5K(p) => Some(PackedRef::Q5K(p)),
            Blocks::Q6K(p) => Some(PackedRef::Q6K(p)),
            _ => None,
        }
    }

    /// `out[r * rows + c] = dot(x[r], W[c])` for the `m = x.len() / cols` rows of `x`.
    pub fn matmul(&self, x: &[f32], out: &mut [f32]) {
        Self::matmul_many(&[self], x, &mut [out]);
    }

    /// [`Self::matmul`] for several matrices of the same width on one input: the activations
    /// are quantized once, and the packed matrices run in one parallel pass.
    pub fn matmul_many(ws: &[&QWeight], x: &[f32], outs: &mut [&mut [f32]]) {
        let Some(first) = ws.first() else { return };
        let k = first.cols;
        let packed: Vec<PackedRef> = ws.iter().filter_map(|w| w.packed()).collect();
        if !packed.is_empty() {
            let acts = QActs::quantize(x, k);
            let mut packed_outs: Vec<&mut [f32]> = Vec::with_capacity(packed.len());
            for (w, out) in ws.iter().zip(outs.iter_mut()) {
                if w.packed().is_some() {
                    packed_outs.push(out);
                }
            }
            qgemm::matmul_many(qgemm::selected(), &packed, &acts, &mut packed_outs);
        }
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            debug_assert_eq!(w.cols, k);
            with_blocks!(&w.blocks, v => matmul_rows(v, w.rows, w.cols, x, out), _p => ())
        }
    }

    /// The matmul as a candle op on a `(m, cols)` f32 tensor, giving `(m, rows)`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.apply_op1_no_bwd(&LinearOp(self))
    }
}

/// Columns per parallel task: enough work to amortise scheduling, few enough that a task's
/// weight rows stay in L2 while every activation row passes over them.
const COLS_PER_TASK: usize = 32;

/// The portable column kernel: one `vec_dot` per (column, row), `out` column-major.
fn columns<T: GgmlType>(w: &[T], kb: usize, xq: &[T::VecDotType], m: usize, out: &mut [f32]) {
    let k = kb * T::BLCK_SIZE;
    for (c, col_out) in out.chunks_exact_mut(m).enumerate() {
        let wrow = &w[c * kb..(c + 1) * kb];
        for (r, o) in col_out.iter_mut().enumerate() {
            *o = T::vec_dot(k, wrow, &xq[r * kb..(r + 1) * kb]);
        }
    }
}

/// The portable path: quantizes the activations to the weight's dot-product type once, then
/// runs [`columns`] over column chunks in parallel.
fn matmul_rows<T>(w: &[T], n: usize, k: usize, x: &[f32], out: &mut [f32])
where
    T: GgmlType + Sync,
    T::VecDotType: Send + Sync,
{
    let m = x.len() / k;
    if m == 0 {
        return;
    }
    let kb = k / T::BLCK_SIZE;
    debug_assert_eq!(out.len(), m * n);
    let mut xq: Vec<T::VecDotType> = (0..m * kb).map(|_| T::VecDotType::zeros()).collect();
    for (row, q) in x.chunks_exact(k).zip(xq.chunks_exact_mut(kb)) {
        T::VecDotType::from_float(row, q);
    }
    // Column-major scratch so that each task owns one contiguous slice of it.
    let mut out_t = vec![0f32; n * m];
    crate::team::for_each_chunk_mut(&mut out_t, COLS_PER_TASK * m, |task, chunk| {
        let c0 = task * COLS_PER_TASK;
        let cols = chunk.len() / m;
        columns(&w[c0 * kb..(c0 + cols) * kb], kb, &xq, m, chunk);
    });
    for c in 0..n {
        for r in 0..m {
            out[r * n + c] = out_t[c * m + r];
        }
    }
}

struct LinearOp<'a>(&'a QWeight);

impl CustomOp1 for LinearOp<'_> {
    fn name(&self) -> &'static str {
        "wick-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let w = self.0;
        let x = match s {
            CpuStorage::F32(v) => v,
            other => candle_core::bail!("wick-linear: expected f32 input, got {:?}", other.dtype()),
        };
        let (m, k) = l.shape().dims2()?;
        if k != w.cols {
            candle_core::bail!("wick-linear: input width {k}, weight expects {}", w.cols);
        }
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("wick-linear: input must be contiguous");
        };
        let mut out = vec![0f32; m * w.rows];
        w.matmul(&x[a..b], &mut out);
        Ok((CpuStorage::F32(out), Shape::from((m, w.rows))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn dense(rows: usize, cols: usize) -> (Vec<f32>, QWeight) {
        let data: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let t = Tensor::from_vec(data.clone(), (rows, cols), &Device::Cpu).unwrap();
        (data, QWeight::from_dense("w", &t).unwrap())
    }

    #[test]
    fn dense_matmul_matches_naive_product() {
        let (w, q) = dense(70, 64);
        let x: Vec<f32> = (0..3 * 64).map(|i| (i % 7) as f32 - 3.0).collect();
        let mut out = vec![0f32; 3 * 70];
        q.matmul(&x, &mut out);
        for r in 0..3 {
            for c in 0..70 {
                let want: f32 = (0..64).map(|i| x[r * 64 + i] * w[c * 64 + i]).sum();
                assert!((out[r * 70 + c] - want).abs() < 1e-3, "{r},{c}");
            }
        }
    }

    #[test]
    fn each_row_is_independent_of_the_batch() {
        let t = Tensor::randn(0f32, 1.0, (96, 64), &Device::Cpu).unwrap();
        let qt = QTensor::quantize(&t, GgmlDType::Q4_1).unwrap();
        let q = QWeight::from_qtensor("w", &qt).unwrap();
        let x: Vec<f32> = (0..5 * 64)
            .map(|i| ((i * 13 % 17) as f32) / 7.0 - 1.0)
            .collect();
        let mut all = vec![0f32; 5 * 96];
        q.matmul(&x, &mut all);
        for r in 0..5 {
            let mut one = vec![0f32; 96];
            q.matmul(&x[r * 64..(r + 1) * 64], &mut one);
            assert_eq!(one, all[r * 96..(r + 1) * 96].to_vec(), "row {r}");
        }
    }

    #[test]
    fn row_permutation_moves_whole_rows() {
        let t = Tensor::randn(0f32, 1.0, (4, 32), &Device::Cpu).unwrap();
        let qt = QTensor::quantize(&t, GgmlDType::Q8_0).unwrap();
        let q = QWeight::from_qtensor("w", &qt).unwrap();
        let before = q.to_f32_vec();
        let after = q.permute_rows(&[2, 0, 3, 1]).to_f32_vec();
        assert_eq!(after[..32], before[64..96]);
        assert_eq!(after[32..64], before[..32]);
    }
}
