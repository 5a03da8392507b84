//! Small CPU ops whose rounding follows ggml's, so our logits track llama.cpp's
//! (this 30-layer model turns last-bit differences into visible logit changes).

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, bail};

/// RMS norm over the last axis, `x · (1/√(mean(x²) + ε)) · w`, with the sum of
/// squares accumulated in f64 as ggml does.
pub(crate) fn rms_norm(xs: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    xs.contiguous()?.apply_op2_no_bwd(weight, &RmsNorm { eps })
}

struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm-ggml"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (Some((x0, x1)), Some((w0, w1))) = (xl.contiguous_offsets(), wl.contiguous_offsets()) else {
            bail!("rms-norm needs contiguous inputs")
        };
        let xs = &xs.as_slice::<f32>()?[x0..x1];
        let ws = &ws.as_slice::<f32>()?[w0..w1];
        let n = ws.len();
        if n == 0 || xl.shape().dims().last() != Some(&n) {
            bail!("rms-norm: weight of {n} does not match input {:?}", xl.shape())
        }
        let mut out = Vec::with_capacity(xs.len());
        for row in xs.chunks_exact(n) {
            let sum: f64 = row.iter().map(|&v| f64::from(v * v)).sum();
            let mean = (sum / n as f64) as f32;
            let scale = 1.0 / (mean + self.eps).sqrt();
            out.extend(row.iter().zip(ws).map(|(&v, &w)| (v * scale) * w));
        }
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }
}
