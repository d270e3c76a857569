//! Element types of the buffers an optimizer reads and writes: 16-bit parameters and
//! gradients (bf16, f16), 16-bit moments and f32 master weights.
//!
//! The semantics are PyTorch's (`adamw-trace/2`): every element is widened to f32 exactly,
//! updated in f32, and rounded once per store to nearest even. With 16-bit moments the
//! parameter is updated from the *unrounded* new moments, as `AdamW(fused=True)` does.

use crate::error::{hyper, Result};

/// The element type of a buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// IEEE binary32.
    #[default]
    F32,
    /// bfloat16: the top 16 bits of an f32.
    Bf16,
    /// IEEE binary16.
    F16,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 | Dtype::F16 => 2,
        }
    }

    /// A 16-bit type.
    pub fn is_16bit(self) -> bool {
        self != Dtype::F32
    }

    /// The name used in traces and checkpoints: `f32`, `bf16`, `f16`.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
            Dtype::F16 => "f16",
        }
    }

    /// Parses [`Dtype::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "f32" | "float32" => Some(Dtype::F32),
            "bf16" | "bfloat16" => Some(Dtype::Bf16),
            "f16" | "float16" => Some(Dtype::F16),
            _ => None,
        }
    }

    /// The kernel's code for this type (`DTYPE_*` in `shaders/numerics.wgsl`).
    pub fn code(self) -> u32 {
        match self {
            Dtype::F32 => crate::twin::DTYPE_F32,
            Dtype::Bf16 => crate::twin::DTYPE_BF16,
            Dtype::F16 => crate::twin::DTYPE_F16,
        }
    }

    /// `x` rounded to this type (nearest even) and widened back: exact for f32.
    pub fn round(self, x: f32) -> f32 {
        match self {
            Dtype::F32 => x,
            _ => self.widen(self.narrow(x)),
        }
    }

    /// The 16-bit pattern of `x` rounded to nearest even (`F32`: not a 16-bit type, the
    /// bf16 pattern).
    pub fn narrow(self, x: f32) -> u16 {
        use crate::twin as n;
        (match self {
            Dtype::F16 => n::f32_to_f16(x),
            _ => n::f32_to_bf16(x),
        }) as u16
    }

    /// The f32 value of a 16-bit pattern (exact).
    pub fn widen(self, h: u16) -> f32 {
        use crate::twin as n;
        match self {
            Dtype::F16 => n::f16_to_f32(u32::from(h)),
            _ => n::bf16_to_f32(u32::from(h)),
        }
    }
}

/// The element type of the optimizer's moments.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StateDtype {
    /// f32 moments (PyTorch's AdamW on parameters kept in f32).
    #[default]
    F32,
    /// Moments in the parameters' type (PyTorch's `AdamW(fused=True)` on 16-bit parameters).
    Param,
}

/// The element types of an optimizer's buffers.
///
/// The default is f32 throughout. The combinations, as PyTorch runs them:
/// - `param` 16-bit, `state: Param`: pure 16-bit training (`AdamW(fused=True)` on bf16 or f16
///   parameters, gradients and moments);
/// - `param` 16-bit, `state: F32`: the f32 AdamW, the parameter rounded after every step;
/// - `master_weights`: the optimizer keeps an f32 copy of every parameter and updates it in
///   f32 (`state: F32`); the engine's 16-bit parameters are written as its rounding in the
///   same pass;
/// - `param: F32` with a 16-bit `grad`: f32 throughout on 16-bit gradient values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Precision {
    /// The parameters' type in the engine's buffers.
    pub param: Dtype,
    /// The gradients' type in the engine's buffers.
    pub grad: Dtype,
    /// The moments' type.
    pub state: StateDtype,
    /// Keep f32 master weights (needs a 16-bit `param` and `state: F32`).
    pub master_weights: bool,
}

impl Precision {
    /// f32 throughout.
    pub const F32: Precision = Precision {
        param: Dtype::F32,
        grad: Dtype::F32,
        state: StateDtype::F32,
        master_weights: false,
    };

    /// Pure 16-bit: parameters, gradients and moments in `dtype`.
    pub fn pure(dtype: Dtype) -> Self {
        Precision {
            param: dtype,
            grad: dtype,
            state: StateDtype::Param,
            master_weights: false,
        }
    }

    /// 16-bit parameters and gradients in `dtype`, f32 master weights and moments.
    pub fn master(dtype: Dtype) -> Self {
        Precision {
            param: dtype,
            grad: dtype,
            state: StateDtype::F32,
            master_weights: true,
        }
    }

    /// The moments' element type.
    pub fn state_dtype(&self) -> Dtype {
        match self.state {
            StateDtype::F32 => Dtype::F32,
            StateDtype::Param => self.param,
        }
    }

    /// Everything is f32.
    pub fn is_f32(&self) -> bool {
        *self == Precision::F32 || (self.param == Dtype::F32 && self.grad == Dtype::F32)
    }

    /// The GPU updates with the mixed-precision kernel (`update_mixed`): any 16-bit stream
    /// or master weights.
    pub(crate) fn needs_mixed_update(&self) -> bool {
        !self.is_f32() || self.master_weights
    }

    /// Pure 16-bit (16-bit parameters and moments): PyTorch then does the gradient
    /// arithmetic (accumulation, clipping) in the 16-bit type too.
    pub fn is_pure_16bit(&self) -> bool {
        self.param.is_16bit() && self.state == StateDtype::Param
    }

    /// Checks the combination.
    pub fn validate(&self) -> Result<()> {
        if self.master_weights && !self.param.is_16bit() {
            return Err(hyper(
                "precision",
                "master_weights needs a 16-bit param dtype",
            ));
        }
        if self.master_weights && self.state != StateDtype::F32 {
            return Err(hyper(
                "precision",
                "master_weights needs f32 moments (state: F32)",
            ));
        }
        Ok(())
    }
}

impl Precision {
    /// The trace format's `dtype` object (`{"param", "grad", "state"}`).
    pub fn dtype_json(&self) -> serde_json::Value {
        let state = match self.state {
            StateDtype::F32 => "f32",
            StateDtype::Param => "param",
        };
        serde_json::json!({"param": self.param.name(), "grad": self.grad.name(), "state": state})
    }

    /// Parses the trace format's `dtype` object (absent: f32 throughout; a missing `grad`
    /// is the param's type, a missing `state` f32) and its `master_weights` flag.
    pub fn from_json(
        dtype: Option<&serde_json::Value>,
        master_weights: Option<&serde_json::Value>,
    ) -> Result<Self> {
        use crate::error::Error;
        let mut p = Precision::F32;
        if let Some(d) = dtype.filter(|d| !d.is_null()) {
            let o = d
                .as_object()
                .ok_or_else(|| Error::InvalidJson(format!("`dtype` must be an object, got {d}")))?;
            for k in o.keys() {
                if !["param", "grad", "state"].contains(&k.as_str()) {
                    return Err(Error::InvalidJson(format!("`dtype`: unknown field `{k}`")));
                }
            }
            let ty = |k: &str| -> Result<Option<Dtype>> {
                match o.get(k) {
                    None => Ok(None),
                    Some(v) => v
                        .as_str()
                        .and_then(Dtype::from_name)
                        .map(Some)
                        .ok_or_else(|| {
                            Error::InvalidJson(format!(
                                "`dtype.{k}` must be f32, bf16 or f16, got {v}"
                            ))
                        }),
                }
            };
            p.param = ty("param")?.unwrap_or(Dtype::F32);
            p.grad = ty("grad")?.unwrap_or(p.param);
            p.state = match o.get("state").map(|v| v.as_str()) {
                None | Some(Some("f32")) => StateDtype::F32,
                Some(Some("param")) => StateDtype::Param,
                Some(_) => {
                    return Err(Error::InvalidJson(format!(
                        "`dtype.state` must be \"f32\" or \"param\", got {}",
                        o["state"]
                    )))
                }
            };
        }
        if let Some(m) = master_weights.filter(|m| !m.is_null()) {
            p.master_weights = m.as_bool().ok_or_else(|| {
                Error::InvalidJson(format!("`master_weights` must be a boolean, got {m}"))
            })?;
        }
        p.validate()?;
        Ok(p)
    }
}

/// A tensor's elements in an engine's memory, read-only: f32, or the 16-bit patterns of the
/// optimizer's 16-bit type.
#[derive(Clone, Copy, Debug)]
pub enum Elems<'a> {
    /// f32 elements.
    F32(&'a [f32]),
    /// bf16 or f16 bit patterns (the type is the optimizer's [`Precision`]).
    Bits16(&'a [u16]),
}

/// A tensor's elements in an engine's memory, to be updated: see [`Elems`].
#[derive(Debug)]
pub enum ElemsMut<'a> {
    /// f32 elements.
    F32(&'a mut [f32]),
    /// bf16 or f16 bit patterns (the type is the optimizer's [`Precision`]).
    Bits16(&'a mut [u16]),
}

impl Elems<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Elems::F32(x) => x.len(),
            Elems::Bits16(x) => x.len(),
        }
    }

    /// No elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements widened to f32 (exact), reading 16-bit patterns as `dtype`.
    pub fn widen(&self, dtype: Dtype) -> Vec<f32> {
        match self {
            Elems::F32(x) => x.to_vec(),
            Elems::Bits16(x) => x.iter().map(|&h| dtype.widen(h)).collect(),
        }
    }

    fn dtype_ok(&self, dtype: Dtype) -> bool {
        matches!(self, Elems::F32(_)) != dtype.is_16bit()
    }
}

impl ElemsMut<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            ElemsMut::F32(x) => x.len(),
            ElemsMut::Bits16(x) => x.len(),
        }
    }

    /// No elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` widened to f32.
    pub(crate) fn get(&self, i: usize, dtype: Dtype) -> f32 {
        match self {
            ElemsMut::F32(x) => x[i],
            ElemsMut::Bits16(x) => dtype.widen(x[i]),
        }
    }

    /// Stores `v` at `i`, rounded to nearest even for a 16-bit type.
    pub(crate) fn set(&mut self, i: usize, v: f32, dtype: Dtype) {
        match self {
            ElemsMut::F32(x) => x[i] = v,
            ElemsMut::Bits16(x) => x[i] = dtype.narrow(v),
        }
    }

    fn dtype_ok(&self, dtype: Dtype) -> bool {
        matches!(self, ElemsMut::F32(_)) != dtype.is_16bit()
    }
}

/// Checks that each tensor's elements have the type `precision` says.
pub(crate) fn check_elems(
    precision: &Precision,
    params: &[ElemsMut<'_>],
    grads: &[Elems<'_>],
) -> Result<()> {
    use crate::error::Error;
    for (i, p) in params.iter().enumerate() {
        if !p.dtype_ok(precision.param) {
            return Err(Error::InvalidTensor {
                tensor: i,
                reason: format!("its parameters must be {}", precision.param.name()),
            });
        }
    }
    for (i, g) in grads.iter().enumerate() {
        if !g.dtype_ok(precision.grad) {
            return Err(Error::InvalidTensor {
                tensor: i,
                reason: format!("its gradients must be {}", precision.grad.name()),
            });
        }
    }
    Ok(())
}
