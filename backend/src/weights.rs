//! A loaded model as one description both forward paths are built from: its checked
//! [`ModelConfig`] (with the architecture's [`Features`](crate::config::Features)), every matrix
//! in its stored type ([`QWeight`]), every norm weight and bias as plain `f32` vectors (converted
//! once, at load), and the RoPE frequencies ([`Rope`], computed once).
//!
//! [`crate::loader`] builds it; [`crate::model::CpuModel`] keeps it as it is, and
//! [`crate::generic::DeviceModel`] consumes it into device tensors (so the host copy is freed).

use crate::config::ModelConfig;
use crate::ops::QWeight;

/// One decoder layer's weights. The optional parts are present exactly when the architecture's
/// features ask for them (the loader checks).
pub struct Layer {
    pub attn_norm: Vec<f32>,
    pub q: QWeight,
    pub k: QWeight,
    pub v: QWeight,
    /// Q, K and V biases (`qkv_bias`).
    pub qkv_bias: Option<[Vec<f32>; 3]>,
    /// RMSNorm weights of each head's queries and keys, `head_dim` wide (`head_norms`).
    pub head_norms: Option<[Vec<f32>; 2]>,
    pub o: QWeight,
    /// RMSNorm weights on the attention output and on the feed-forward output (`post_norms`).
    pub post_norms: Option<[Vec<f32>; 2]>,
    pub ffn_norm: Vec<f32>,
    pub gate: QWeight,
    pub up: QWeight,
    pub down: QWeight,
}

/// The LM head: its own matrix, or the embedding matrix when the model ties them.
pub enum LmHead {
    Separate(QWeight),
    Tied,
}

/// RoPE's inverse frequencies `1 / theta^(2i / head_dim)`, for the global layers and, when the
/// windowed layers have their own base, for those.
pub struct Rope {
    pub global: Vec<f32>,
    pub local: Option<Vec<f32>>,
}

impl Rope {
    pub fn new(cfg: &ModelConfig) -> Self {
        Rope {
            global: cfg.inv_freq(cfg.rope_theta),
            local: cfg.local_attention.map(|l| cfg.inv_freq(l.rope_theta)),
        }
    }

    /// Whether layer `layer` rotates with the local frequencies.
    pub fn uses_local(&self, cfg: &ModelConfig, layer: usize) -> bool {
        self.local.is_some() && cfg.layer_window(layer).is_some()
    }
}

pub struct Weights {
    pub cfg: ModelConfig,
    pub embed: QWeight,
    pub layers: Vec<Layer>,
    pub norm: Vec<f32>,
    pub lm_head: LmHead,
    pub rope: Rope,
}

impl Weights {
    /// The dominant weight type, for reporting (`q4_1`, `f32`, ...).
    pub fn dtype_name(&self) -> &'static str {
        self.layers
            .first()
            .map(|l| l.gate.dtype_name())
            .unwrap_or_else(|| self.embed.dtype_name())
    }

    /// Every matrix dequantized to f32 (for reference runs and conversion checks).
    pub fn dequantize(&mut self) {
        for l in &mut self.layers {
            for w in [
                &mut l.q,
                &mut l.k,
                &mut l.v,
                &mut l.o,
                &mut l.gate,
                &mut l.up,
                &mut l.down,
            ] {
                *w = w.dequantized();
            }
        }
        self.embed = self.embed.dequantized();
        if let LmHead::Separate(w) = &mut self.lm_head {
            *w = w.dequantized();
        }
    }

    /// The matrix the LM head multiplies by.
    pub fn head(&self) -> &QWeight {
        match &self.lm_head {
            LmHead::Separate(w) => w,
            LmHead::Tied => &self.embed,
        }
    }
}
