//! The element types a benchmark row runs with: f32 (the original rows) and the
//! mixed-precision configurations of [`wgpu_adamw::Precision`], each with the bytes one step
//! moves per parameter, counted from what `update_mixed` (`shaders/update_mixed.wgsl`) reads
//! and writes.

use crate::device::MixedCopyKind;
use anyhow::{bail, Result};
use wgpu_adamw::{Dtype, Precision, StateDtype};

/// One row's element types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchPrecision(pub Precision);

impl BenchPrecision {
    /// f32 throughout: the benchmark's original rows.
    pub const F32: BenchPrecision = BenchPrecision(Precision::F32);

    /// Pure 16-bit: parameters, gradients and moments in `dtype` (`<dtype>`, e.g. `bf16`).
    pub fn pure(dtype: Dtype) -> Self {
        Self(Precision::pure(dtype))
    }

    /// 16-bit parameters and gradients, f32 moments (`<dtype>-f32m`).
    pub fn f32_moments(dtype: Dtype) -> Self {
        Self(Precision {
            param: dtype,
            grad: dtype,
            state: StateDtype::F32,
            master_weights: false,
        })
    }

    /// 16-bit parameters and gradients, f32 master weights and moments (`<dtype>-master`).
    pub fn master(dtype: Dtype) -> Self {
        Self(Precision::master(dtype))
    }

    /// The three bf16 rows of `--mixed`: pure, f32 moments, master weights.
    pub fn mixed_set() -> Vec<Self> {
        vec![
            Self::pure(Dtype::Bf16),
            Self::f32_moments(Dtype::Bf16),
            Self::master(Dtype::Bf16),
        ]
    }

    /// Whether this is f32 throughout.
    pub fn is_f32(&self) -> bool {
        self.0 == Precision::F32
    }

    /// The row's label: `f32`, `bf16`, `bf16-f32m`, `bf16-master` (and the `f16` ones).
    pub fn name(&self) -> String {
        let p = self.0;
        if self.is_f32() {
            return "f32".into();
        }
        let d = p.param.name();
        if p.master_weights {
            format!("{d}-master")
        } else if p.state == StateDtype::F32 {
            format!("{d}-f32m")
        } else {
            d.into()
        }
    }

    /// Parses [`BenchPrecision::name`].
    pub fn parse(s: &str) -> Result<Self> {
        let (d, rest) = s.split_once('-').unwrap_or((s, ""));
        let dtype = match Dtype::from_name(d) {
            Some(d) => d,
            None => bail!("unknown precision `{s}` (known: f32, bf16, bf16-f32m, bf16-master, f16, f16-f32m, f16-master)"),
        };
        Ok(match (dtype, rest) {
            (Dtype::F32, "") => Self::F32,
            (Dtype::F32, _) => bail!("`{s}`: f32 takes no suffix"),
            (d, "") => Self::pure(d),
            (d, "f32m") => Self::f32_moments(d),
            (d, "master") => Self::master(d),
            _ => bail!("unknown precision `{s}` (suffixes: -f32m, -master)"),
        })
    }

    /// Bytes one step reads and writes per parameter, as `update_mixed` (and the f32
    /// `update`) moves them: the parameter read and written (written only with master
    /// weights, whose step never reads the 16-bit parameter), the gradient read, each moment
    /// read and written, the master weight read and written.
    ///
    /// f32 28 (36 with amsgrad); bf16 pure 2+2 + 2 + 2+2 + 2+2 = 14; bf16 with f32 moments
    /// 2+2 + 2 + 4+4 + 4+4 = 22; bf16 with master weights 2 + 2 + 4+4 + 4+4 + 4+4 = 28.
    pub fn bytes_per_param(&self, amsgrad: bool) -> u64 {
        let p = self.0;
        let param = p.param.size() * if p.master_weights { 1 } else { 2 };
        let grad = p.grad.size();
        let moments = if amsgrad { 3 } else { 2 };
        let state = 2 * p.state_dtype().size() * moments;
        let master = if p.master_weights { 8 } else { 0 };
        param + grad + state + master
    }

    /// The copy kernel that moves this row's bytes (`None`: f32, `copy.wgsl`).
    pub(crate) fn copy_kind(&self) -> Result<Option<MixedCopyKind>> {
        let p = self.0;
        if self.is_f32() {
            return Ok(None);
        }
        if !(p.param.is_16bit() && p.grad.is_16bit()) {
            bail!(
                "precision {}: the benchmark runs 16-bit parameters with 16-bit gradients only",
                self.name()
            );
        }
        Ok(Some(if p.master_weights {
            MixedCopyKind::Master
        } else if p.state == StateDtype::F32 {
            MixedCopyKind::F32Moments
        } else {
            MixedCopyKind::Pure16
        }))
    }
}

impl std::fmt::Display for BenchPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_per_param_count_the_kernels_streams() {
        assert_eq!(BenchPrecision::F32.bytes_per_param(false), 28);
        assert_eq!(BenchPrecision::F32.bytes_per_param(true), 36);
        let [pure, f32m, master]: [BenchPrecision; 3] =
            BenchPrecision::mixed_set().try_into().unwrap();
        assert_eq!(pure.bytes_per_param(false), 14);
        assert_eq!(f32m.bytes_per_param(false), 22);
        assert_eq!(master.bytes_per_param(false), 28);
    }

    #[test]
    fn names_round_trip() {
        for p in [
            BenchPrecision::F32,
            BenchPrecision::pure(Dtype::F16),
            BenchPrecision::f32_moments(Dtype::F16),
            BenchPrecision::master(Dtype::F16),
        ]
        .into_iter()
        .chain(BenchPrecision::mixed_set())
        {
            assert_eq!(BenchPrecision::parse(&p.name()).unwrap(), p);
        }
        assert!(BenchPrecision::parse("f32-master").is_err());
        assert!(BenchPrecision::parse("bf16-x").is_err());
        assert!(BenchPrecision::parse("int8").is_err());
    }
}
