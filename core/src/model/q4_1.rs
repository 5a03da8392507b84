//! A vectorized Q4_1 matrix multiply, as a candle custom op.
//!
//! candle 0.11 multiplies Q4_1 weights with a scalar loop, several times slower
//! than its vectorized Q4_0/Q8_0 paths; SmolLM2's GGUF as shipped is Q4_1. This
//! op keeps the GGUF blocks as they are (no repacking, no extra memory) and
//! follows ggml's numerics exactly: activations are quantized per 32 values to
//! Q8_1 (scale `d = amax / 127` and `s = d · Σq`, both stored as f16), and each
//! output is `Σ_blocks d_w·d_x·Σ(q_w·q_x) + m_w·s_x` (ggml_vec_dot_q4_1_q8_1).

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Module, Result, Shape, Tensor, bail};
use half::f16;

/// Values per quantization block.
const BLOCK: usize = 32;
/// Bytes of one GGUF Q4_1 block: f16 scale, f16 minimum, 16 bytes of nibbles.
const BLOCK_BYTES: usize = 20;
/// Activation rows that share one pass over a weight row during prefill.
const ROW_TILE: usize = 4;

/// One block of activations quantized like ggml's `block_q8_1`, with the f16
/// fields already widened (the values are the f16-rounded ones).
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct BlockQ8_1 {
    qs: [i8; BLOCK],
    d: f32,
    s: f32,
}

/// An (out × in) Q4_1 weight matrix, rows in GGUF block layout.
pub struct Q4_1Matrix {
    weight: QTensor,
    rows: usize,
    blocks_per_row: usize,
}

impl Q4_1Matrix {
    /// Wraps a 2-D Q4_1 tensor of shape (out, in).
    pub fn from_qtensor(weight: QTensor) -> Result<Self> {
        if weight.dtype() != GgmlDType::Q4_1 {
            bail!("Q4_1Matrix needs a Q4_1 tensor, got {:?}", weight.dtype())
        }
        let (rows, cols) = weight.shape().dims2()?;
        if cols % BLOCK != 0 {
            bail!("Q4_1 row length {cols} is not a multiple of {BLOCK}")
        }
        let blocks_per_row = cols / BLOCK;
        if weight.data()?.len() != rows * blocks_per_row * BLOCK_BYTES {
            bail!("Q4_1 tensor data has the wrong size for shape ({rows}, {cols})")
        }
        Ok(Self { weight, rows, blocks_per_row })
    }

    /// Bytes its blocks take in memory.
    pub fn bytes(&self) -> u64 {
        self.weight.storage_size_in_bytes() as u64
    }

    fn cols(&self) -> usize {
        self.blocks_per_row * BLOCK
    }
}

impl Module for Q4_1Matrix {
    /// Maps f32 `(..., in)` to `(..., out)`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        xs.contiguous()?.apply_op1_no_bwd(self)
    }
}

impl CustomOp1 for Q4_1Matrix {
    fn name(&self) -> &'static str {
        "q4_1-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else { bail!("q4_1-matmul needs a contiguous input") };
        let xs = &storage.as_slice::<f32>()?[start..end];
        let dims = layout.shape().dims();
        let k = self.cols();
        if dims.last() != Some(&k) {
            bail!("q4_1-matmul: input {:?} does not end in {k}", layout.shape())
        }
        let m = xs.len() / k;
        let data = self.weight.data()?;
        let weights = data.as_ref();
        let kernel = Kernel::detect();
        let acts = kernel.quantize(xs);
        let mut out = vec![0f32; m * self.rows];
        let (n, bpr) = (self.rows, self.blocks_per_row);
        let out_addr = out.as_mut_ptr() as usize;
        let row_tiles = m.div_ceil(ROW_TILE);
        candle_core::utils::barrier_pool().execute_chunked(row_tiles * n, |items| {
            for item in items {
                let (tile, row) = (item / n, item % n);
                let w = &weights[row * bpr * BLOCK_BYTES..(row + 1) * bpr * BLOCK_BYTES];
                let first = tile * ROW_TILE;
                let last = m.min(first + ROW_TILE);
                let act_row = |a: usize| &acts[a * bpr..(a + 1) * bpr];
                // SAFETY (both writes): `a < m` and `row < n`, so the index is inside
                // `out`, which outlives this call; each (a, row) pair belongs to exactly
                // one item, so no two workers write the same element.
                let store = |a: usize, value: f32| unsafe { *(out_addr as *mut f32).add(a * n + row) = value };
                if last - first == ROW_TILE {
                    let values =
                        kernel.dot4(w, [act_row(first), act_row(first + 1), act_row(first + 2), act_row(first + 3)]);
                    values.into_iter().enumerate().for_each(|(i, v)| store(first + i, v));
                } else {
                    (first..last).for_each(|a| store(a, kernel.dot(w, act_row(a))));
                }
            }
        });
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("checked above") = n;
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }
}

/// Quantizes 32 activations like ggml's x86 `quantize_row_q8_1`.
#[inline(always)]
fn quantize_block(xs: &[f32]) -> BlockQ8_1 {
    let amax = xs.iter().fold(0f32, |m, x| m.max(x.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut qs = [0i8; BLOCK];
    let mut sum = 0i32;
    for (q, x) in qs.iter_mut().zip(xs) {
        // Round half to even, as `_mm256_round_ps(_MM_ROUND_NEAREST)` does.
        *q = (x * id).round_ties_even() as i8;
        sum += i32::from(*q);
    }
    BlockQ8_1 { qs, d: f16::from_f32(d).to_f32(), s: f16::from_f32(d * sum as f32).to_f32() }
}

/// The dot-product implementation chosen for this CPU.
#[derive(Clone, Copy)]
enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
            return Self::Avx2;
        }
        Self::Portable
    }

    /// Quantizes activation rows (a multiple of 32 values) to Q8_1 blocks.
    fn quantize(self, xs: &[f32]) -> Vec<BlockQ8_1> {
        match self {
            Self::Portable => xs.chunks_exact(BLOCK).map(quantize_block).collect(),
            // SAFETY: `detect` checked that the CPU has AVX2, FMA and F16C.
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => unsafe { avx2::quantize(xs) },
        }
    }

    /// Dot product of one weight row (raw Q4_1 blocks) with one activation row.
    fn dot(self, weights: &[u8], acts: &[BlockQ8_1]) -> f32 {
        match self {
            Self::Portable => dot_portable(weights, acts),
            // SAFETY: `detect` checked that the CPU has AVX2, FMA and F16C.
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => unsafe { avx2::dot(weights, acts) },
        }
    }

    /// Dot products of one weight row with four activation rows (prefill): each
    /// weight block is unpacked once for the four.
    fn dot4(self, weights: &[u8], acts: [&[BlockQ8_1]; ROW_TILE]) -> [f32; ROW_TILE] {
        match self {
            Self::Portable => acts.map(|a| dot_portable(weights, a)),
            // SAFETY: `detect` checked that the CPU has AVX2, FMA and F16C.
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => unsafe { avx2::dot4(weights, acts) },
        }
    }
}

/// The scale and minimum of a raw Q4_1 block.
fn block_scales(block: &[u8]) -> (f32, f32) {
    let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
    let m = f16::from_le_bytes([block[2], block[3]]).to_f32();
    (d, m)
}

/// Plain-Rust dot product (any CPU; the reference the SIMD paths are tested against).
fn dot_portable(weights: &[u8], acts: &[BlockQ8_1]) -> f32 {
    let mut total = 0f32;
    for (block, act) in weights.chunks_exact(BLOCK_BYTES).zip(acts) {
        let (d, m) = block_scales(block);
        let mut sum = 0i32;
        for (j, &byte) in block[4..].iter().enumerate() {
            sum += i32::from(byte & 0x0F) * i32::from(act.qs[j]) + i32::from(byte >> 4) * i32::from(act.qs[j + 16]);
        }
        total += d * act.d * sum as f32 + m * act.s;
    }
    total
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BLOCK, BLOCK_BYTES, BlockQ8_1, quantize_block};
    use std::arch::x86_64::*;

    /// [`quantize_block`] compiled for AVX2, where its rounding is one instruction.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn quantize(xs: &[f32]) -> Vec<BlockQ8_1> {
        xs.chunks_exact(BLOCK).map(quantize_block).collect()
    }

    /// AVX2 dot product of one Q4_1 row with one Q8_1 row.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `weights` holds `acts.len()` blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot(weights: &[u8], acts: &[BlockQ8_1]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut mins = 0f32;
        for (block, act) in weights.chunks_exact(BLOCK_BYTES).zip(acts) {
            let (d, m, w) = unpack(block);
            acc = accumulate(w, d, act, acc);
            mins += m * act.s;
        }
        hsum(acc) + mins
    }

    /// [`dot`] of one weight row against four activation rows at once.
    ///
    /// # Safety
    /// As for [`dot`], for each of the four rows.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot4(weights: &[u8], acts: [&[BlockQ8_1]; 4]) -> [f32; 4] {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut mins = [0f32; 4];
        for (b, block) in weights.chunks_exact(BLOCK_BYTES).enumerate() {
            let (d, m, w) = unpack(block);
            for r in 0..4 {
                let act = &acts[r][b];
                acc[r] = accumulate(w, d, act, acc[r]);
                mins[r] += m * act.s;
            }
        }
        [0, 1, 2, 3].map(|r| hsum(acc[r]) + mins[r])
    }

    /// The scale, the minimum and the 32 weights (as bytes 0..16) of one Q4_1 block;
    /// low nibbles are values 0..16 of the block, high nibbles 16..32.
    #[target_feature(enable = "avx2,f16c")]
    fn unpack(block: &[u8]) -> (f32, f32, __m256i) {
        let scales = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from_le_bytes([block[0], block[1], block[2], block[3]])));
        let d = _mm_cvtss_f32(scales);
        let m = _mm_cvtss_f32(_mm_shuffle_ps(scales, scales, 1));
        let nibbles: [u8; 16] = block[4..BLOCK_BYTES].try_into().expect("a block has 16 bytes of nibbles");
        // SAFETY: `nibbles` is 16 bytes; an unaligned load reads exactly those.
        let packed = unsafe { _mm_loadu_si128(nibbles.as_ptr() as *const __m128i) };
        let w = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), _mm256_set1_epi8(0x0F));
        (d, m, w)
    }

    /// `acc + d_w·d_x · Σ q_w·q_x` over one block, as eight partial lanes.
    #[target_feature(enable = "avx2,fma")]
    fn accumulate(w: __m256i, d: f32, act: &BlockQ8_1, acc: __m256) -> __m256 {
        // SAFETY: `act.qs` is 32 bytes; an unaligned load reads exactly those.
        let x = unsafe { _mm256_loadu_si256(act.qs.as_ptr() as *const __m256i) };
        let products = _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1));
        _mm256_fmadd_ps(_mm256_set1_ps(d * act.d), _mm256_cvtepi32_ps(products), acc)
    }

    /// Sum of the eight lanes, in ggml's order.
    #[target_feature(enable = "avx2")]
    fn hsum(v: __m256) -> f32 {
        let sum4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let sum2 = _mm_add_ps(sum4, _mm_movehl_ps(sum4, sum4));
        let sum1 = _mm_add_ss(sum2, _mm_shuffle_ps(sum2, sum2, 1));
        _mm_cvtss_f32(sum1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn random(shape: (usize, usize), seed: u64) -> Tensor {
        let mut rng = StdRng::seed_from_u64(seed);
        let data: Vec<f32> = (0..shape.0 * shape.1).map(|_| rng.random_range(-1.0..1.0)).collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    /// Max |a - b| relative to max |b|.
    fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max) / scale
    }

    #[test]
    fn matches_dense_and_candle_across_shapes() {
        for (m, k, n) in [(1, 576, 1536), (1, 1536, 576), (7, 576, 195), (33, 64, 9), (1, 32, 1)] {
            let w = QTensor::quantize(&random((n, k), 1), GgmlDType::Q4_1).unwrap();
            let x = random((m, k), 2);
            let dense = x.matmul(&w.dequantize(&Device::Cpu).unwrap().t().unwrap()).unwrap();
            let stock = candle_core::quantized::QMatMul::from_qtensor(
                QTensor::quantize(&w.dequantize(&Device::Cpu).unwrap(), GgmlDType::Q4_1).unwrap(),
            )
            .unwrap()
            .forward(&x)
            .unwrap();
            let ours = Q4_1Matrix::from_qtensor(w).unwrap().forward(&x).unwrap();
            assert_eq!(ours.dims(), &[m, n]);
            // Against candle's scalar Q4_1 path: the same Q8_1 formula, but candle rounds
            // x/d half away from zero where ggml's x86 path (ours) rounds x·127/amax half
            // to even, so a few activations differ by one step.
            assert!(rel_diff(&ours, &stock) < 1e-3, "({m},{k},{n}) vs candle: {}", rel_diff(&ours, &stock));
            // Against exact f32 activations: the 8-bit activation rounding (≤ 1/254 of
            // each block's range) bounds the relative error well under 2 %.
            assert!(rel_diff(&ours, &dense) < 2e-2, "({m},{k},{n}) vs dense: {}", rel_diff(&ours, &dense));
        }
    }

    #[test]
    fn simd_and_portable_kernels_agree_and_batched_inputs_work() {
        let w = QTensor::quantize(&random((40, 256), 3), GgmlDType::Q4_1).unwrap();
        let x = random((6, 256), 4);
        let flat = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let acts: Vec<BlockQ8_1> = flat.chunks_exact(BLOCK).map(quantize_block).collect();
        let kernel = Kernel::detect();
        let fast = kernel.quantize(&flat);
        assert!(fast.iter().zip(&acts).all(|(a, b)| a.qs == b.qs && a.d == b.d && a.s == b.s));
        let data = w.data().unwrap().into_owned();
        for (row, a) in (0..40).zip((0..6).cycle()) {
            let wr = &data[row * 8 * BLOCK_BYTES..(row + 1) * 8 * BLOCK_BYTES];
            let ar = &acts[a * 8..(a + 1) * 8];
            let (simd, plain) = (kernel.dot(wr, ar), dot_portable(wr, ar));
            assert!((simd - plain).abs() <= 1e-4 * plain.abs().max(1.0), "{simd} vs {plain}");
            // The four-row kernel gives bit-identical results to four single-row calls.
            let rows = [0, 1, 2, 3].map(|i| &acts[((a + i) % 6) * 8..((a + i) % 6 + 1) * 8]);
            assert_eq!(kernel.dot4(wr, rows), rows.map(|r| kernel.dot(wr, r)));
        }
        let matrix = Q4_1Matrix::from_qtensor(w).unwrap();
        let flat = matrix.forward(&x).unwrap();
        let batched = matrix.forward(&x.reshape((2, 3, 256)).unwrap()).unwrap();
        assert_eq!(batched.dims(), &[2, 3, 40]);
        assert_eq!(
            batched.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            flat.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn rejects_other_types_and_bad_inputs() {
        let q8 = QTensor::quantize(&random((4, 64), 5), GgmlDType::Q8_0).unwrap();
        assert!(Q4_1Matrix::from_qtensor(q8).is_err());
        let w = Q4_1Matrix::from_qtensor(QTensor::quantize(&random((4, 64), 6), GgmlDType::Q4_1).unwrap()).unwrap();
        assert!(w.forward(&random((2, 32), 7)).is_err());
    }
}
