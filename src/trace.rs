//! PyTorch traces in the `adamw-trace/1` and `/2` formats (16-bit types, master weights,
//! GradScaler, accumulation, EMA): reading, replaying on either backend, comparing against
//! the recorded values with the format's tolerances (the 16-bit rule for 16-bit tensors),
//! and writing a replay's outputs in the format.

use crate::config::{AdamWConfig, GradNormOrder, GroupConfig, Schedule};
use crate::context::GpuContext;
use crate::cpu::{CpuAdamW, CpuParamGroup};
use crate::error::{Error, Result};
use crate::gpu::{read_buffer, read_buffer_async, GpuAdamW, ParamGroup, TensorBinding};
use crate::kernel::{CONTROL_SCALE_USED, CONTROL_WORDS, SCALAR_WORDS};
use crate::precision::{Dtype as ElemType, Elems, ElemsMut, Precision};
use crate::state::{parse_optimizer_json, OptimizerState};
use safetensors::tensor::Dtype;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Parameter tolerance: `|x - torch| <= PARAM_ATOL + PARAM_RTOL * |torch|`.
pub const PARAM_ATOL: f64 = 1e-6;
/// See [`PARAM_ATOL`].
pub const PARAM_RTOL: f64 = 1e-5;
/// Moment tolerance: `|x - torch| <= MOMENT_RTOL * |torch| + MOMENT_MAX_RTOL * max|torch|`
/// (the max over the tensor).
pub const MOMENT_RTOL: f64 = 1e-5;
/// See [`MOMENT_RTOL`].
pub const MOMENT_MAX_RTOL: f64 = 1e-6;
/// LR tolerance: `|x - torch| <= LR_RTOL * |torch| + LR_MAX_RTOL * max(lr)`.
pub const LR_RTOL: f64 = 1e-6;
/// See [`LR_RTOL`].
pub const LR_MAX_RTOL: f64 = 1e-9;

/// The type of a trace's `init/` and `final/` tensors: f32 with master weights, else the
/// param's.
fn trace_param_dtype(p: &Precision) -> ElemType {
    if p.master_weights {
        ElemType::F32
    } else {
        p.param
    }
}

/// One parameter tensor of a trace (16-bit values widened to f32, exactly).
#[derive(Clone, Debug)]
pub struct TraceParam {
    /// Its name (`w0`, `emb`, ...).
    pub name: String,
    /// Its group index.
    pub group: usize,
    /// Values before step 1.
    pub init: Vec<f32>,
    /// Gradient of each micro-batch of each step: index `(s - 1) * accumulate + m` is
    /// micro-batch `m` of step `s` (without accumulation, index 0 is step 1).
    pub grads: Vec<Vec<f32>>,
    /// PyTorch's parameter after the last step.
    pub final_param: Vec<f32>,
    /// PyTorch's first moment after the last step.
    pub final_exp_avg: Vec<f32>,
    /// PyTorch's second moment after the last step.
    pub final_exp_avg_sq: Vec<f32>,
    /// PyTorch's running max of the second moment (amsgrad traces).
    pub final_max_exp_avg_sq: Option<Vec<f32>>,
    /// Master-weight traces: the final master rounded to the 16-bit type (`final_model/`).
    pub final_model: Option<Vec<f32>>,
    /// EMA traces: the averaged weights (`final_ema/`).
    pub final_ema: Option<Vec<f32>>,
}

/// A whole `adamw-trace/1` file.
#[derive(Clone, Debug)]
pub struct Trace {
    /// Where it was read from.
    pub path: PathBuf,
    /// Optimizer config and schedule.
    pub config: AdamWConfig,
    /// Per-group overrides.
    pub groups: Vec<GroupConfig>,
    /// Number of optimizer steps.
    pub steps: u32,
    /// Parameters, group by group, in the config's order.
    pub params: Vec<TraceParam>,
    /// The lr PyTorch used at each step, per group.
    pub lr: Vec<Vec<f64>>,
    /// The loss scale of each step (`grad_scale/S`): AMP traces' input; GradScaler traces'
    /// expected output (the scale PyTorch's scaler used).
    pub grad_scale: Option<Vec<f32>>,
    /// GradScaler traces: the scale after the last step (`final_scale`).
    pub final_scale: Option<f32>,
    /// GradScaler traces: the growth tracker after the last step (`final_growth_tracker`).
    pub final_growth_tracker: Option<i32>,
    /// AMP traces: whether PyTorch skipped each step (`skipped`).
    pub skipped: Option<Vec<bool>>,
    /// Schedules that cycle momentum: `betas[0]` of each step, per group (`beta1/G`).
    pub beta1: Option<Vec<Vec<f64>>>,
    /// ReduceLROnPlateau: the metric after each epoch (`metric`).
    pub metric: Option<Vec<f32>>,
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::InvalidFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl Trace {
    /// Reads and checks a trace file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses a trace from bytes; `path` names it in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(path, format!("not a safetensors file: {e}")))?;
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| bad(path, format!("not a safetensors file: {e}")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let format = meta.get("format").map(String::as_str);
        if !matches!(format, Some("adamw-trace/1") | Some("adamw-trace/2")) {
            return Err(bad(
                path,
                "metadata `format` is not `adamw-trace/1` or `adamw-trace/2`",
            ));
        }
        let cfg: Value = serde_json::from_str(meta.get("config").map_or("", String::as_str))
            .map_err(|e| bad(path, format!("metadata `config` is not JSON: {e}")))?;
        // /2's training-loop features are not built yet: refuse them by name.
        let wrap = |e: Error| bad(path, e.to_string());
        let mut config = parse_optimizer_json(&cfg["optimizer"]).map_err(wrap)?;
        config.schedule = Schedule::from_json_value(&cfg["schedule"]).map_err(wrap)?;
        config.steps_per_epoch = match &cfg["steps_per_epoch"] {
            Value::Null => 1,
            v => v
                .as_u64()
                .and_then(|k| u32::try_from(k).ok())
                .ok_or_else(|| {
                    bad(
                        path,
                        format!("`steps_per_epoch` must be a positive integer, got {v}"),
                    )
                })?,
        };
        config.max_grad_norm =
            match &cfg["max_grad_norm"] {
                Value::Null => None,
                v => Some(v.as_f64().ok_or_else(|| {
                    bad(path, format!("`max_grad_norm` must be a number, got {v}"))
                })?),
            };
        config.precision =
            Precision::from_json(cfg.get("dtype"), cfg.get("master_weights")).map_err(wrap)?;
        config.loss_scaling = st.names().iter().any(|n| n.starts_with("grad_scale/"));
        config.accumulate = match &cfg["accumulate"] {
            Value::Null => 1,
            v => v
                .as_u64()
                .and_then(|k| u32::try_from(k).ok())
                .filter(|&k| k >= 1)
                .ok_or_else(|| {
                    bad(
                        path,
                        format!("`accumulate` must be an integer >= 1, got {v}"),
                    )
                })?,
        };
        if !cfg["ema"].is_null() {
            let decay = cfg["ema"]["decay"]
                .as_f64()
                .ok_or_else(|| bad(path, "`ema.decay` must be a number"))?;
            config = config.with_ema(decay);
        }
        if !cfg["grad_scaler"].is_null() {
            if !cfg["amp"].is_null() {
                return Err(bad(path, "`grad_scaler` and `amp` exclude each other"));
            }
            config = config.with_grad_scaler(
                crate::config::parse_grad_scaler_json(&cfg["grad_scaler"]).map_err(wrap)?,
            );
        }
        // PyTorch's traces were recorded on the CPU: reproduce its norm's summation order.
        config.grad_norm_order = GradNormOrder::TorchCpu;
        config.validate().map_err(wrap)?;
        let steps = cfg["steps"]
            .as_u64()
            .and_then(|k| u32::try_from(k).ok())
            .ok_or_else(|| bad(path, "`steps` must be a non-negative integer"))?;
        let groups_json = cfg["groups"]
            .as_array()
            .ok_or_else(|| bad(path, "`groups` must be a list"))?;
        // A tensor of `n` elements of type `ty`, widened to f32 (exactly).
        let values = |name: &str, n: usize, ty: ElemType| -> Result<Vec<f32>> {
            let t = st
                .tensor(name)
                .map_err(|_| bad(path, format!("missing tensor `{name}`")))?;
            let want = match ty {
                ElemType::F32 => Dtype::F32,
                ElemType::Bf16 => Dtype::BF16,
                ElemType::F16 => Dtype::F16,
            };
            if t.dtype() != want || t.shape() != [n] {
                return Err(bad(
                    path,
                    format!(
                        "`{name}` must be {want:?} [{n}], is {:?} {:?}",
                        t.dtype(),
                        t.shape()
                    ),
                ));
            }
            Ok(match ty {
                ElemType::F32 => bytemuck::pod_collect_to_vec(t.data()),
                _ => bytemuck::pod_collect_to_vec::<u8, u16>(t.data())
                    .into_iter()
                    .map(|h| ty.widen(h))
                    .collect(),
            })
        };
        let f32s = |name: &str, n: usize| values(name, n, ElemType::F32);
        let prec = config.precision;
        let (p_ty, s_ty) = (trace_param_dtype(&prec), prec.state_dtype());
        let k = config.accumulate;
        let mut groups = Vec::new();
        let mut params = Vec::new();
        for (gi, g) in groups_json.iter().enumerate() {
            let num = |k: &str| -> Result<Option<f64>> {
                match &g[k] {
                    Value::Null => Ok(None),
                    v => v
                        .as_f64()
                        .map(Some)
                        .ok_or_else(|| bad(path, format!("group {gi}: `{k}` must be a number"))),
                }
            };
            let gc = GroupConfig {
                lr: num("lr")?,
                weight_decay: num("weight_decay")?,
            };
            gc.validate().map_err(wrap)?;
            groups.push(gc);
            let list = g["params"]
                .as_array()
                .ok_or_else(|| bad(path, format!("group {gi}: `params` must be a list")))?;
            for p in list {
                let (name, n) = match (p[0].as_str(), p[1].as_u64()) {
                    (Some(name), Some(n)) if p.as_array().is_some_and(|a| a.len() == 2) => {
                        (name.to_string(), n as usize)
                    }
                    _ => return Err(bad(path, format!("group {gi}: bad param entry {p}"))),
                };
                // Micro-batch m of step s at index (s - 1) * k + m.
                let grads = (1..=steps)
                    .flat_map(|s| (0..k).map(move |m| (s, m)))
                    .map(|(s, m)| {
                        let t = match k {
                            1 => format!("grad/{s}/{name}"),
                            _ => format!("grad/{s}/{m}/{name}"),
                        };
                        values(&t, n, prec.grad)
                    })
                    .collect::<Result<Vec<_>>>()?;
                params.push(TraceParam {
                    group: gi,
                    init: values(&format!("init/{name}"), n, p_ty)?,
                    grads,
                    final_param: values(&format!("final/{name}"), n, p_ty)?,
                    final_exp_avg: values(&format!("final_exp_avg/{name}"), n, s_ty)?,
                    final_exp_avg_sq: values(&format!("final_exp_avg_sq/{name}"), n, s_ty)?,
                    final_max_exp_avg_sq: if config.amsgrad {
                        Some(values(&format!("final_max_exp_avg_sq/{name}"), n, s_ty)?)
                    } else {
                        None
                    },
                    final_ema: if config.ema_decay.is_some() {
                        Some(values(&format!("final_ema/{name}"), n, config.ema_dtype())?)
                    } else {
                        None
                    },
                    final_model: if prec.master_weights {
                        Some(values(&format!("final_model/{name}"), n, prec.param)?)
                    } else {
                        None
                    },
                    name,
                });
            }
        }
        if groups.is_empty() {
            return Err(bad(path, "no param groups"));
        }
        let f64s = |name: &str, n: usize| -> Result<Vec<f64>> {
            let t = st
                .tensor(name)
                .map_err(|_| bad(path, format!("missing tensor `{name}`")))?;
            if t.dtype() != Dtype::F64 || t.shape() != [n] {
                return Err(bad(path, format!("`{name}` must be F64 [{n}]")));
            }
            Ok(bytemuck::pod_collect_to_vec::<u8, f64>(t.data()))
        };
        let lr = (0..groups.len())
            .map(|gi| f64s(&format!("lr/{gi}"), steps as usize))
            .collect::<Result<Vec<_>>>()?;

        let grad_scale = if config.loss_scaling {
            let scales = (1..=steps)
                .map(|s| Ok(f32s(&format!("grad_scale/{s}"), 1)?[0]))
                .collect::<Result<Vec<f32>>>()?;
            if let Some(bad_scale) = scales.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
                return Err(bad(
                    path,
                    format!("loss scale {bad_scale} is not finite and > 0"),
                ));
            }
            Some(scales)
        } else {
            None
        };
        let beta1 = if config.schedule.cycles_momentum() {
            Some(
                (0..groups.len())
                    .map(|gi| f64s(&format!("beta1/{gi}"), steps as usize))
                    .collect::<Result<Vec<_>>>()?,
            )
        } else {
            None
        };
        let metric = if config.schedule.needs_metric() {
            let t = st
                .tensor("metric")
                .map_err(|_| bad(path, "missing tensor `metric`"))?;
            if t.dtype() != Dtype::F32 || t.shape().len() != 1 {
                return Err(bad(path, "`metric` must be a 1-D F32 tensor"));
            }
            Some(bytemuck::pod_collect_to_vec::<u8, f32>(t.data()))
        } else {
            None
        };
        config.validate_groups(&groups).map_err(wrap)?;
        let skipped = match st.tensor("skipped") {
            Err(_) => None,
            Ok(t) if t.dtype() == Dtype::U8 && t.shape() == [steps as usize] => {
                Some(t.data().iter().map(|&b| b != 0).collect())
            }
            Ok(_) => return Err(bad(path, format!("`skipped` must be U8 [{steps}]"))),
        };
        let (final_scale, final_growth_tracker) = if config.grad_scaler.is_some() {
            let tracker = st
                .tensor("final_growth_tracker")
                .map_err(|_| bad(path, "missing tensor `final_growth_tracker`"))?;
            if tracker.dtype() != Dtype::I32 || tracker.shape() != [1] {
                return Err(bad(path, "`final_growth_tracker` must be I32 [1]"));
            }
            let t: Vec<i32> = bytemuck::pod_collect_to_vec(tracker.data());
            (Some(f32s("final_scale", 1)?[0]), Some(t[0]))
        } else {
            (None, None)
        };
        Ok(Self {
            path: path.to_path_buf(),
            final_scale,
            final_growth_tracker,
            config,
            groups,
            steps,
            params,
            lr,
            grad_scale,
            skipped,
            beta1,
            metric,
        })
    }

    /// The metric to write before 0-based step `s`: epoch `j`'s after its last step.
    fn metric_before(&self, s: usize) -> Option<f32> {
        let k = self.config.steps_per_epoch as usize;
        let m = self.metric.as_ref()?;
        (s > 0 && s.is_multiple_of(k)).then(|| m.get(s / k - 1).copied().unwrap_or(f32::NAN))
    }
}

/// Which implementation replays a trace.
#[derive(Clone, Copy, Debug)]
pub enum Backend<'a> {
    /// The fused kernel on this device.
    Gpu(&'a GpuContext),
    /// The CPU reference.
    Cpu,
}

/// What a replay produced, in the trace's own terms.
#[derive(Clone, Debug, Default)]
pub struct ReplayOutput {
    /// Final parameters, per trace param.
    pub params: Vec<Vec<f32>>,
    /// Final state (moments per trace param).
    pub exp_avg: Vec<Vec<f32>>,
    /// See `exp_avg`.
    pub exp_avg_sq: Vec<Vec<f32>>,
    /// See `exp_avg` (amsgrad only).
    pub max_exp_avg_sq: Option<Vec<Vec<f32>>>,
    /// The lr used at each step, per group.
    pub lr: Vec<Vec<f32>>,
    /// beta1 used at each step, per group.
    pub beta1: Vec<Vec<f32>>,
    /// Whether each step was skipped (non-finite gradients under loss scaling).
    pub skipped: Vec<bool>,
    /// Master-weight traces: the engine's 16-bit parameters (widened), per trace param.
    pub model: Option<Vec<Vec<f32>>>,
    /// EMA traces: the averaged weights, per trace param.
    pub ema: Option<Vec<Vec<f32>>>,
    /// The loss scale each step used.
    pub grad_scale: Vec<f32>,
    /// The loss scale after the last step.
    pub final_scale: f32,
    /// The GradScaler's growth tracker after the last step.
    pub final_growth_tracker: u32,
}

impl ReplayOutput {
    /// Which of its values `other` holds bit for bit, by name: the parameters, each moment,
    /// the other streams (AMSGrad maximum, 16-bit model, EMA: an absent one equals only an
    /// absent one), the lr of every step, and the skipped steps with the final loss scale.
    pub fn same_bits(&self, other: &Self) -> Vec<(&'static str, bool)> {
        let bits =
            |v: &[Vec<f32>]| -> Vec<u32> { v.iter().flatten().map(|x| x.to_bits()).collect() };
        let opt = |v: &Option<Vec<Vec<f32>>>| v.as_deref().map(bits);
        vec![
            ("parameters", bits(&self.params) == bits(&other.params)),
            ("exp_avg", bits(&self.exp_avg) == bits(&other.exp_avg)),
            (
                "exp_avg_sq",
                bits(&self.exp_avg_sq) == bits(&other.exp_avg_sq),
            ),
            (
                "max_exp_avg_sq, 16-bit model, EMA",
                opt(&self.max_exp_avg_sq) == opt(&other.max_exp_avg_sq)
                    && opt(&self.model) == opt(&other.model)
                    && opt(&self.ema) == opt(&other.ema),
            ),
            ("lr", bits(&self.lr) == bits(&other.lr)),
            (
                "skipped steps and loss scale",
                self.skipped == other.skipped
                    && self.final_scale.to_bits() == other.final_scale.to_bits(),
            ),
        ]
    }
}

/// Replays `trace`. With `checkpoint_at = Some((k, file))`, the state after step `k` is saved
/// to `file`, a fresh optimizer is built from that file, and it finishes the run.
pub fn replay(
    trace: &Trace,
    backend: Backend<'_>,
    checkpoint_at: Option<(u32, &Path)>,
) -> Result<ReplayOutput> {
    if let Some((k, _)) = checkpoint_at {
        if k > trace.steps {
            return Err(Error::ShapeMismatch(format!(
                "checkpoint step {k} is past the trace's {} steps",
                trace.steps
            )));
        }
    }
    match backend {
        Backend::Cpu => replay_cpu(trace, trace.config.clone(), checkpoint_at, &[]),
        Backend::Gpu(ctx) => replay_gpu(trace, ctx, checkpoint_at),
    }
}

fn cpu_groups(trace: &Trace) -> Vec<CpuParamGroup> {
    trace
        .groups
        .iter()
        .enumerate()
        .map(|(gi, &config)| CpuParamGroup {
            config,
            lens: trace
                .params
                .iter()
                .filter(|p| p.group == gi)
                .map(|p| p.init.len())
                .collect(),
        })
        .collect()
}

/// The config a sharded replay of `trace` runs with: the trace's, the gradient norm in the
/// compensated order (a shard cannot follow PyTorch's per-tensor CPU order, see
/// [`crate::shard`]).
fn sharded_config(trace: &Trace) -> AdamWConfig {
    let mut config = trace.config.clone();
    config.grad_norm_order = GradNormOrder::Compensated;
    config
}

/// The unsharded reference of a sharded replay ([`ShardReplay`]): [`CpuAdamW`] with the
/// trace's config in the compensated norm order, its norm summed as the shards of a layout sum it
/// ([`CpuAdamW::set_norm_shards`]). `layouts` holds `(step, layout)` pairs: from 0-based step
/// `step` on, the layout is `layout` (a run re-sharded between steps changes it).
pub fn replay_cpu_sharded(
    trace: &Trace,
    layouts: &[(u32, crate::shard::ShardLayout)],
) -> Result<ReplayOutput> {
    replay_cpu(trace, sharded_config(trace), None, layouts)
}

fn replay_cpu(
    trace: &Trace,
    config: AdamWConfig,
    checkpoint_at: Option<(u32, &Path)>,
    layouts: &[(u32, crate::shard::ShardLayout)],
) -> Result<ReplayOutput> {
    let prec = trace.config.precision;
    let scaler = trace.config.grad_scaler.is_some();
    let mut grad_scale = Vec::with_capacity(trace.steps as usize);
    let mut opt = CpuAdamW::new(config, cpu_groups(trace))?;
    // The engine's parameters: f32, or 16-bit patterns.
    let mut p32: Vec<Vec<f32>> = Vec::new();
    let mut p16: Vec<Vec<u16>> = Vec::new();
    for p in &trace.params {
        if prec.param.is_16bit() {
            p16.push(p.init.iter().map(|&x| prec.param.narrow(x)).collect());
        } else {
            p32.push(p.init.clone());
        }
    }
    if prec.master_weights {
        let init: Vec<&[f32]> = trace.params.iter().map(|p| p.init.as_slice()).collect();
        opt.set_master_weights(&init)?;
    }
    let g16: Vec<Vec<Vec<u16>>> = if prec.grad.is_16bit() {
        trace
            .params
            .iter()
            .map(|p| {
                p.grads
                    .iter()
                    .map(|g| g.iter().map(|&x| prec.grad.narrow(x)).collect())
                    .collect()
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut lr = vec![Vec::with_capacity(trace.steps as usize); trace.groups.len()];
    let mut beta1 = lr.clone();
    let mut skipped = Vec::with_capacity(trace.steps as usize);
    // One pass more than there are steps, so a checkpoint after the last step is taken too.
    for s in 0..=trace.steps as usize {
        if let Some((_, file)) = checkpoint_at.filter(|&(k, _)| s == k as usize) {
            opt.save_checkpoint(file)?;
            opt = CpuAdamW::from_state(&OptimizerState::load(file)?)?;
        }
        if s == trace.steps as usize {
            break;
        }
        if let Some((_, layout)) = layouts.iter().rfind(|(k, _)| *k as usize == s) {
            opt.set_norm_shards(Some(layout))?;
        }
        if let Some(scales) = trace.grad_scale.as_ref().filter(|_| !scaler) {
            opt.set_loss_scale(scales[s]);
        }
        if let Some(m) = trace.metric_before(s) {
            opt.set_metric(m);
        }
        let k = trace.config.accumulate as usize;
        for micro in s * k..(s + 1) * k {
            let grads: Vec<Elems<'_>> = trace
                .params
                .iter()
                .enumerate()
                .map(|(i, p)| match g16.get(i) {
                    Some(g) => Elems::Bits16(&g[micro]),
                    None => Elems::F32(&p.grads[micro]),
                })
                .collect();
            let mut views: Vec<ElemsMut<'_>> = if prec.param.is_16bit() {
                p16.iter_mut().map(|p| ElemsMut::Bits16(p)).collect()
            } else {
                p32.iter_mut().map(|p| ElemsMut::F32(p)).collect()
            };
            opt.step_mixed(&mut views, &grads)?;
        }
        for (g, l) in lr.iter_mut().zip(opt.lr()) {
            g.push(l);
        }
        for (g, b) in beta1.iter_mut().zip(opt.beta1()) {
            g.push(b);
        }
        skipped.push(opt.last_step().skipped);
        grad_scale.push(opt.last_loss_scale());
    }
    let engine: Vec<Vec<f32>> = if prec.param.is_16bit() {
        p16.iter()
            .map(|p| p.iter().map(|&h| prec.param.widen(h)).collect())
            .collect()
    } else {
        p32
    };
    let st = opt.state();
    let mut out = output_from_state(engine, st, lr, beta1, skipped);
    out.grad_scale = grad_scale;
    Ok(out)
}

fn output_from_state(
    params: Vec<Vec<f32>>,
    st: OptimizerState,
    lr: Vec<Vec<f32>>,
    beta1: Vec<Vec<f32>>,
    skipped: Vec<bool>,
) -> ReplayOutput {
    let amsgrad = st.config.amsgrad;
    // With master weights the trace's `final/` is the master, `final_model/` the engine's.
    let (params, model) = if st.config.precision.master_weights {
        let master = st
            .tensors
            .iter()
            .zip(&params)
            .map(|(t, p)| t.master.clone().unwrap_or_else(|| p.clone()))
            .collect();
        (master, Some(params))
    } else {
        (params, None)
    };
    let ema = st.config.ema_decay.map(|_| {
        st.tensors
            .iter()
            .zip(&params)
            .map(|(t, p)| t.ema.clone().unwrap_or_else(|| p.clone()))
            .collect()
    });
    let mut out = ReplayOutput {
        ema,
        final_scale: st.loss_scale,
        final_growth_tracker: st.growth_tracker,
        params,
        model,
        lr,
        beta1,
        skipped,
        max_exp_avg_sq: amsgrad.then(Vec::new),
        ..Default::default()
    };
    for t in st.tensors {
        out.exp_avg.push(t.exp_avg);
        out.exp_avg_sq.push(t.exp_avg_sq);
        if let (Some(v), Some(out_v)) = (t.max_exp_avg_sq, out.max_exp_avg_sq.as_mut()) {
            out_v.push(v);
        }
    }
    out
}

fn replay_gpu(
    trace: &Trace,
    ctx: &GpuContext,
    checkpoint_at: Option<(u32, &Path)>,
) -> Result<ReplayOutput> {
    let mut run = GpuReplay::new(trace, &ctx.device, &ctx.queue)?;
    // One pass more than there are steps, so a checkpoint after the last step is taken too.
    for s in 0..=trace.steps as usize {
        if let Some((_, file)) = checkpoint_at.filter(|&(k, _)| s == k as usize) {
            run.opt.save_checkpoint(file)?;
            run.restart(&OptimizerState::load(file)?)?;
        }
        if s < trace.steps as usize {
            run.step(s)?;
        }
    }
    let io = &run.io;
    let logs = io
        .log_ranges()
        .iter()
        .map(|&(b, off, size)| read_buffer(io.device, io.queue, b, off, size))
        .collect::<Result<Vec<_>>>()?;
    io.output(&logs, run.opt.state()?)
}

/// [`replay`] on the GPU without blocking: every read-back is awaited, so it runs on the
/// web (wasm32), where the browser polls the device. Natively the futures complete only
/// while something polls the device (`wgpu::Device::poll`).
///
/// With `checkpoint_at = Some(k)`, the state after step `k` goes to checkpoint bytes
/// ([`GpuAdamW::checkpoint_bytes_async`]; no file system on the web), a fresh optimizer is
/// built from them, and it finishes the run.
pub async fn replay_async(
    trace: &Trace,
    ctx: &GpuContext,
    checkpoint_at: Option<u32>,
) -> Result<ReplayOutput> {
    if let Some(k) = checkpoint_at.filter(|&k| k > trace.steps) {
        return Err(Error::ShapeMismatch(format!(
            "checkpoint step {k} is past the trace's {} steps",
            trace.steps
        )));
    }
    let mut run = GpuReplay::new_async(trace, &ctx.device, &ctx.queue).await?;
    for s in 0..=trace.steps as usize {
        if checkpoint_at == Some(s as u32) {
            let bytes = run.opt.checkpoint_bytes_async().await?;
            let state = OptimizerState::from_bytes(&bytes, Path::new("<checkpoint bytes>"))?;
            let io = &run.io;
            run.opt =
                GpuAdamW::new_async(io.device, io.queue, state.config.clone(), io.groups.clone())
                    .await?;
            run.opt.load_state(&state)?;
        }
        if s < trace.steps as usize {
            run.step(s)?;
        }
    }
    let mut logs = Vec::new();
    let io = &run.io;
    for (b, off, size) in io.log_ranges() {
        logs.push(read_buffer_async(io.device, io.queue, b, off, size).await?);
    }
    let state = run.opt.state_async().await?;
    io.output(&logs, state)
}

/// A trace being replayed by [`GpuAdamW`].
struct GpuReplay<'a> {
    io: ReplayBuffers<'a>,
    opt: GpuAdamW,
}

/// A replay's buffers: the trace's parameters and gradients, and the logs of lr, beta1 and
/// the loss-scaling control words, one record per step, read back once at the end.
struct ReplayBuffers<'a> {
    trace: &'a Trace,
    device: &'a wgpu::Device,
    queue: &'a wgpu::Queue,
    /// The optimizer's groups over `pbuf` and `gbuf`.
    groups: Vec<ParamGroup>,
    /// Each trace param's first element in `pbuf` and `gbuf`.
    offsets: Vec<u64>,
    pbuf: wgpu::Buffer,
    gbuf: wgpu::Buffer,
    lr_log: wgpu::Buffer,
    amp_log: wgpu::Buffer,
    /// The micro-batches of one step, side by side (rewritten every step).
    staging: wgpu::Buffer,
    /// Bytes of one step's record in `lr_log`.
    row: u64,
}

const CONTROL_BYTES: u64 = 4 * CONTROL_WORDS as u64;

/// Values as the words of a buffer of `ty` elements.
fn buffer_words(values: &mut dyn Iterator<Item = f32>, ty: ElemType) -> Vec<u32> {
    match ty {
        ElemType::F32 => values.map(f32::to_bits).collect(),
        _ => {
            let halves: Vec<u16> = values.map(|x| ty.narrow(x)).collect();
            halves
                .chunks(2)
                .map(|c| u32::from(c[0]) | c.get(1).map_or(0, |&h| u32::from(h) << 16))
                .collect()
        }
    }
}

impl<'a> GpuReplay<'a> {
    fn new(trace: &'a Trace, device: &'a wgpu::Device, queue: &'a wgpu::Queue) -> Result<Self> {
        let io = ReplayBuffers::new(trace, device, queue);
        let opt = GpuAdamW::new(device, queue, trace.config.clone(), io.groups.clone())?;
        Self::with(io, opt)
    }

    /// [`GpuReplay::new`] without blocking (master weights and EMA read the parameters back).
    async fn new_async(
        trace: &'a Trace,
        device: &'a wgpu::Device,
        queue: &'a wgpu::Queue,
    ) -> Result<Self> {
        let io = ReplayBuffers::new(trace, device, queue);
        let opt =
            GpuAdamW::new_async(device, queue, trace.config.clone(), io.groups.clone()).await?;
        Self::with(io, opt)
    }

    /// The replay of `io` by `opt`, its master weights the trace's initial values.
    fn with(io: ReplayBuffers<'a>, opt: GpuAdamW) -> Result<Self> {
        let trace = io.trace;
        if trace.config.precision.master_weights {
            let init: Vec<&[f32]> = trace.params.iter().map(|p| p.init.as_slice()).collect();
            opt.set_master_weights(&init)?;
        }
        Ok(Self { io, opt })
    }

    /// A fresh optimizer over the same tensors, from `state`.
    fn restart(&mut self, state: &OptimizerState) -> Result<()> {
        let io = &self.io;
        self.opt = GpuAdamW::new(io.device, io.queue, state.config.clone(), io.groups.clone())?;
        self.opt.load_state(state)
    }

    /// Submits step `s` (0-based): its micro-batches and the copies into the logs.
    fn step(&mut self, s: usize) -> Result<()> {
        let io = &self.io;
        let gbuf = &io.gbuf;
        // The step's micro-batches are uploaded beside each other and copied into the
        // gradient buffer one by one between the calls of the step, all in one submit (the
        // micro-batch counter lives on the device).
        let k = io.trace.config.accumulate as usize;
        let mut uploads: Vec<u32> = Vec::with_capacity(k * (gbuf.size() / 4) as usize);
        for micro in s * k..(s + 1) * k {
            let mut w = io.grad_words(micro);
            w.resize((gbuf.size() / 4) as usize, 0);
            uploads.extend(w);
        }
        io.queue
            .write_buffer(&io.staging, 0, bytemuck::cast_slice(&uploads));
        io.set_controls(&self.opt, s);
        let mut encoder = io.device.create_command_encoder(&Default::default());
        for m in 0..k as u64 {
            encoder.copy_buffer_to_buffer(&io.staging, m * gbuf.size(), gbuf, 0, gbuf.size());
            self.opt.encode_step(&mut encoder);
        }
        io.submit_logged(&self.opt, encoder, Some(s))
    }
}

/// One rank's replay of a trace with a shard of a ZeRO-1 optimizer ([`GpuAdamW::shard`], the
/// trace's config in the compensated norm order, as a shard needs): like every rank of a
/// data-parallel run, it holds the trace's whole parameters, and the whole gradients or
/// (after [`ShardReplay::scatter_grads`]) its range of them; it updates the range of the
/// flattened space its layout gives it. Each call of a step (one per micro-batch with accumulation) is
/// [`ShardReplay::partials`] on every rank, the engine's all-gather of the entries of
/// [`ShardReplay::exchange`] (nothing to gather without clipping or loss scaling), then
/// [`ShardReplay::apply`]. The flattened space is the trace's params in registration order
/// (group by group).
pub struct ShardReplay<'a> {
    io: ReplayBuffers<'a>,
    opt: GpuAdamW,
    /// Trace param indices in registration order.
    order: Vec<usize>,
    /// The rank's range of the gradients alone, where [`ShardReplay::scatter_grads`] put
    /// them.
    scattered: Option<wgpu::Buffer>,
}

impl<'a> ShardReplay<'a> {
    /// Rank `rank` of `layout`, from the trace's initial parameters.
    pub fn new(
        trace: &'a Trace,
        device: &'a wgpu::Device,
        queue: &'a wgpu::Queue,
        layout: &crate::shard::ShardLayout,
        rank: usize,
    ) -> Result<Self> {
        let io = ReplayBuffers::new(trace, device, queue);
        let opt = GpuAdamW::shard(
            device,
            queue,
            sharded_config(trace),
            io.groups.clone(),
            layout,
            rank,
            crate::gpu::GpuOptions::default(),
        )?;
        let order: Vec<usize> = (0..trace.groups.len())
            .flat_map(|gi| (0..trace.params.len()).filter(move |&i| trace.params[i].group == gi))
            .collect();
        let run = Self {
            io,
            opt,
            order,
            scattered: None,
        };
        if trace.config.precision.master_weights {
            let init: Vec<f32> = run.flat(|p| &p.init);
            let pieces = run.pieces(&init)?;
            run.opt.set_master_weights(&pieces)?;
        }
        Ok(run)
    }

    /// A shard resumed from its checkpoint `state` (its rank and layout are the
    /// checkpoint's) and the whole flattened parameters of that step, `params`
    /// ([`ShardReplay::params`] of every rank, joined in rank order).
    pub fn resume(
        trace: &'a Trace,
        device: &'a wgpu::Device,
        queue: &'a wgpu::Queue,
        state: &OptimizerState,
        params: &[f32],
    ) -> Result<Self> {
        let meta = state.shard.as_ref().ok_or_else(|| {
            Error::CheckpointMismatch("not a shard's checkpoint (no shard metadata)".into())
        })?;
        let run = Self::new(trace, device, queue, &meta.layout, meta.rank)?;
        run.set_params(params)?;
        run.opt.load_state(state)?;
        Ok(run)
    }

    /// The optimizer.
    pub fn optimizer(&self) -> &GpuAdamW {
        &self.opt
    }

    /// From now on each call writes only this rank's range of the flattened gradients, into
    /// a buffer of its own that the shard reads through [`GpuAdamW::shard_grads`]: what a
    /// rank holds after the engine's reduce-scatter.
    pub fn scatter_grads(&mut self) -> Result<()> {
        let meta = self.opt.shard_meta().expect("a shard");
        let range = meta.layout.range(meta.rank)?;
        let size = self.io.trace.config.precision.grad.size();
        let buffer = self.io.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("the rank's range of the gradients"),
            size: ((range.end - range.start) * size).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let grads = self.opt.shard_grads(&buffer, 0)?;
        let mut encoder = self.io.device.create_command_encoder(&Default::default());
        self.opt.set_grads(&mut encoder, &grads)?;
        self.io.queue.submit([encoder.finish()]);
        self.scattered = Some(buffer);
        Ok(())
    }

    /// A per-param quantity of the trace, flattened in registration order.
    fn flat(&self, f: impl Fn(&TraceParam) -> &Vec<f32>) -> Vec<f32> {
        let params = &self.io.trace.params;
        self.order
            .iter()
            .flat_map(|&i| f(&params[i]).iter().copied())
            .collect()
    }

    /// The whole flattened parameters (registration order) split per trace param, in trace
    /// order.
    fn by_param<'v>(&self, flat: &'v [f32]) -> Result<Vec<&'v [f32]>> {
        let params = &self.io.trace.params;
        let total: usize = params.iter().map(|p| p.init.len()).sum();
        if flat.len() != total {
            return Err(Error::ShapeMismatch(format!(
                "{} parameters for a trace of {total}",
                flat.len()
            )));
        }
        let mut by_param = vec![&[][..]; params.len()];
        let mut at = 0;
        for &i in &self.order {
            let n = params[i].init.len();
            by_param[i] = &flat[at..at + n];
            at += n;
        }
        Ok(by_param)
    }

    /// This rank's pieces of a flattened quantity.
    fn pieces<'v>(&self, flat: &'v [f32]) -> Result<Vec<&'v [f32]>> {
        let meta = self.opt.shard_meta().expect("a shard");
        let mut starts = Vec::with_capacity(meta.tensors.len());
        let mut at = 0usize;
        for &(_, n) in &meta.tensors {
            starts.push(at);
            at += n as usize;
        }
        Ok(meta
            .pieces()?
            .iter()
            .map(|p| &flat[starts[p.tensor] + p.start as usize..][..p.len as usize])
            .collect())
    }

    /// Writes the whole flattened parameters (registration order) into the engine's buffer.
    pub fn set_params(&self, params: &[f32]) -> Result<()> {
        let io = &self.io;
        // Back to trace order, which is the buffer's.
        let by_param = self.by_param(params)?;
        let words = buffer_words(
            &mut by_param.iter().flat_map(|p| p.iter().copied()),
            io.trace.config.precision.param,
        );
        io.queue
            .write_buffer(&io.pbuf, 0, bytemuck::cast_slice(&words));
        Ok(())
    }

    /// The first half of call `micro` of 0-based step `s`: the micro-batch's gradients, the
    /// loss scale and metric the trace gives, and [`GpuAdamW::encode_partials`], submitted.
    pub fn partials(&mut self, s: usize, micro: usize) -> Result<()> {
        let io = &self.io;
        let trace = io.trace;
        let k = trace.config.accumulate as usize;
        if s >= trace.steps as usize || micro >= k {
            return Err(Error::ShapeMismatch(format!(
                "call {micro} of step {s}: the trace has {} steps of {k} calls",
                trace.steps
            )));
        }
        let c = s * k + micro;
        match &self.scattered {
            Some(buffer) => {
                let meta = self.opt.shard_meta().expect("a shard");
                let range = meta.layout.range(meta.rank)?;
                let flat = self.flat(|p| &p.grads[c]);
                let words = buffer_words(
                    &mut flat[range.start as usize..range.end as usize]
                        .iter()
                        .copied(),
                    trace.config.precision.grad,
                );
                io.queue
                    .write_buffer(buffer, 0, bytemuck::cast_slice(&words));
            }
            None => {
                let words = io.grad_words(c);
                io.queue
                    .write_buffer(&io.gbuf, 0, bytemuck::cast_slice(&words));
            }
        }
        if micro == 0 {
            io.set_controls(&self.opt, s);
        }
        let mut encoder = io.device.create_command_encoder(&Default::default());
        self.opt.encode_partials(&mut encoder);
        io.queue.submit([encoder.finish()]);
        Ok(())
    }

    /// Where this rank's entry is and where the gathered entries go (`None`: nothing to
    /// exchange).
    pub fn exchange(&self) -> Option<crate::gpu::ShardExchange> {
        self.opt.exchange()
    }

    /// The second half of call `micro` of step `s`: [`GpuAdamW::encode_apply`] and, after the
    /// last call, the copies into the lr and control logs, submitted.
    pub fn apply(&mut self, s: usize, micro: usize) -> Result<()> {
        let io = &self.io;
        let mut encoder = io.device.create_command_encoder(&Default::default());
        self.opt.encode_apply(&mut encoder);
        let last = micro + 1 == io.trace.config.accumulate as usize;
        io.submit_logged(&self.opt, encoder, last.then_some(s))
    }

    /// This rank's range of the flattened parameters (16-bit ones widened).
    pub fn params(&self) -> Result<Vec<f32>> {
        let io = &self.io;
        let words = read_buffer(io.device, io.queue, &io.pbuf, 0, io.pbuf.size())?;
        let mut by_param = io.param_values(&words);
        // The buffer is in trace order; the flattened space in registration order.
        let flat: Vec<f32> = self
            .order
            .iter()
            .flat_map(|&i| std::mem::take(&mut by_param[i]))
            .collect();
        let meta = self.opt.shard_meta().expect("a shard");
        let range = meta.layout.range(meta.rank)?;
        Ok(flat[range.start as usize..range.end as usize].to_vec())
    }

    /// The run's output from the whole flattened parameters (every rank's
    /// [`ShardReplay::params`], in rank order) and the merged state
    /// ([`crate::shard::merge_states`]); the lr and loss-scale logs are this rank's (steps it
    /// did not run read 0).
    pub fn output(&self, params: &[f32], state: OptimizerState) -> Result<ReplayOutput> {
        let io = &self.io;
        let by_param = self.by_param(params)?.iter().map(|p| p.to_vec()).collect();
        let log = read_buffer(io.device, io.queue, &io.lr_log, 0, io.lr_log.size())?;
        let amp = read_buffer(io.device, io.queue, &io.amp_log, 0, io.amp_log.size())?;
        io.output_from(by_param, &log, &amp, state)
    }
}

impl<'a> ReplayBuffers<'a> {
    /// The buffers, with the trace's initial parameters, and the optimizer's groups over them.
    fn new(trace: &'a Trace, device: &'a wgpu::Device, queue: &'a wgpu::Queue) -> Self {
        let prec = trace.config.precision;
        let (pb, gb) = (prec.param.size(), prec.grad.size());
        // All params in one buffer and all grads in another, packed with no padding: most
        // tensors then start at offsets that are not multiples of 16 bytes, and 16-bit tensors
        // of odd length share a 32-bit word with their neighbours.
        let mut offsets = Vec::new();
        let mut total = 0u64;
        for p in &trace.params {
            offsets.push(total);
            total += p.init.len() as u64;
        }
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC;
        let buffer = |label, size: u64, usage| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage,
                mapped_at_creation: false,
            })
        };
        let padded = |elem: u64| (total * elem).div_ceil(4).max(4) * 4;
        let (pbuf, gbuf) = (
            buffer("trace params", padded(pb), usage),
            buffer("trace grads", padded(gb), usage),
        );
        let init = buffer_words(
            &mut trace.params.iter().flat_map(|p| p.init.iter().copied()),
            prec.param,
        );
        queue.write_buffer(&pbuf, 0, bytemuck::cast_slice(&init));
        let groups: Vec<ParamGroup> = trace
            .groups
            .iter()
            .enumerate()
            .map(|(gi, &config)| ParamGroup {
                config,
                tensors: trace
                    .params
                    .iter()
                    .zip(&offsets)
                    .filter(|(p, _)| p.group == gi)
                    .map(|(p, &off)| TensorBinding {
                        param: pbuf.clone(),
                        param_offset: off * pb,
                        grad: gbuf.clone(),
                        grad_offset: off * gb,
                        len: p.init.len() as u64,
                    })
                    .collect(),
            })
            .collect();
        let row = 4 * u64::from(SCALAR_WORDS) * trace.groups.len() as u64;
        let log_usage = wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
        let steps = u64::from(trace.steps);
        Self {
            lr_log: buffer("trace lr log", (row * steps).max(16), log_usage),
            amp_log: buffer("trace amp log", (CONTROL_BYTES * steps).max(16), log_usage),
            staging: buffer(
                "trace grads of one step",
                u64::from(trace.config.accumulate) * gbuf.size(),
                log_usage,
            ),
            trace,
            device,
            queue,
            groups,
            offsets,
            pbuf,
            gbuf,
            row,
        }
    }

    /// What to read back at the end: the parameters, the lr log, the control log.
    fn log_ranges(&self) -> [(&wgpu::Buffer, u64, u64); 3] {
        [
            (&self.pbuf, 0, self.pbuf.size()),
            (&self.lr_log, 0, self.lr_log.size()),
            (&self.amp_log, 0, self.amp_log.size()),
        ]
    }

    /// The output, from the words of [`ReplayBuffers::log_ranges`] and the final state.
    fn output(&self, logs: &[Vec<u32>], state: OptimizerState) -> Result<ReplayOutput> {
        let [flat, log, amp] = logs else {
            return Err(Error::Readback("three logs expected".into()));
        };
        self.output_from(self.param_values(flat), log, amp, state)
    }

    /// The words of micro-batch `micro`'s gradients, all params end to end (trace order).
    fn grad_words(&self, micro: usize) -> Vec<u32> {
        buffer_words(
            &mut self
                .trace
                .params
                .iter()
                .flat_map(|p| p.grads[micro].iter().copied()),
            self.trace.config.precision.grad,
        )
    }

    /// Step `s`'s loss scale (where the trace gives it and no GradScaler keeps it) and
    /// plateau metric, written into `opt`'s control buffer.
    fn set_controls(&self, opt: &GpuAdamW, s: usize) {
        let trace = self.trace;
        if let Some(scales) = trace
            .grad_scale
            .as_ref()
            .filter(|_| trace.config.grad_scaler.is_none())
        {
            opt.set_loss_scale(scales[s]);
        }
        if let Some(m) = trace.metric_before(s) {
            opt.set_metric(m);
        }
    }

    /// Each trace param's values (16-bit ones widened) from the words of `pbuf`.
    fn param_values(&self, words: &[u32]) -> Vec<Vec<f32>> {
        let elem = |i: usize| match self.trace.config.precision.param {
            ElemType::F32 => f32::from_bits(words[i]),
            ty => ty.widen((words[i / 2] >> (16 * (i % 2))) as u16),
        };
        self.trace
            .params
            .iter()
            .zip(&self.offsets)
            .map(|(p, &off)| {
                (off as usize..off as usize + p.init.len())
                    .map(elem)
                    .collect()
            })
            .collect()
    }

    /// Submits `encoder`, after the copies of step `s`'s scalars and control words into the
    /// logs where `s` is given.
    fn submit_logged(
        &self,
        opt: &GpuAdamW,
        mut encoder: wgpu::CommandEncoder,
        s: Option<usize>,
    ) -> Result<()> {
        if let Some(s) = s {
            opt.encode_copy_step_scalars(&mut encoder, &self.lr_log, self.row * s as u64)?;
            opt.encode_copy_control(&mut encoder, &self.amp_log, CONTROL_BYTES * s as u64)?;
        }
        self.queue.submit([encoder.finish()]);
        // Let wgpu free what finished submissions held (the staging copies of the gradients):
        // without it a long replay grows by one gradient upload per step.
        #[cfg(not(target_arch = "wasm32"))]
        let _ = self.device.poll(wgpu::PollType::Poll);
        Ok(())
    }

    /// The output from the final parameters (per trace param), the words of the lr and
    /// control logs, and the final state.
    fn output_from(
        &self,
        params: Vec<Vec<f32>>,
        log: &[u32],
        amp: &[u32],
        state: OptimizerState,
    ) -> Result<ReplayOutput> {
        let trace = self.trace;
        let n_groups = trace.groups.len();
        let w = SCALAR_WORDS as usize;
        let column = |word: usize| -> Vec<Vec<f32>> {
            (0..n_groups)
                .map(|gi| {
                    (0..trace.steps as usize)
                        .map(|s| f32::from_bits(log[w * (s * n_groups + gi) + word]))
                        .collect()
                })
                .collect()
        };
        let (lr, beta1) = (column(0), column(6));
        let w = CONTROL_WORDS;
        let skipped = (0..trace.steps as usize)
            .map(|s| trace.config.loss_scaling && amp[w * s + 1] != 0)
            .collect();
        let grad_scale = (0..trace.steps as usize)
            .map(|s| f32::from_bits(amp[w * s + CONTROL_SCALE_USED]))
            .collect();
        let mut out = output_from_state(params, state, lr, beta1, skipped);
        out.grad_scale = grad_scale;
        Ok(out)
    }
}

/// The worst error of one kind of value, as a multiple of its tolerance.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Worst {
    /// Largest `|x - torch| / tolerance` (<= 1 passes).
    pub ratio: f64,
    /// Largest `|x - torch|`.
    pub abs: f64,
    /// Where the worst ratio is (`name[index]` or `lr/g[step]`).
    pub at: String,
    /// 16-bit kinds: the largest distance in ulps of the 16-bit type at the torch value, and
    /// the fraction of elements that are not bit-identical (the ratio is the larger of
    /// `ulps / 8` and `fraction / 1%`).
    pub bits16: Option<(f64, f64)>,
}

impl Worst {
    /// A replay that has too few or too many values of this kind fails outright.
    fn wrong_count(&mut self, what: String, got: usize, want: usize) {
        if got != want {
            self.ratio = f64::INFINITY;
            self.at = format!("{what}: {got} values, the trace has {want}");
        }
    }

    fn add(&mut self, x: f64, want: f64, tol: f64, at: impl FnOnce() -> String) {
        let err = (x - want).abs();
        let ratio = if !x.is_finite() || !want.is_finite() {
            // Infinities and NaNs (PyTorch's values at the f32 edges) must be the same.
            if x == want || (x.is_nan() && want.is_nan()) {
                0.0
            } else {
                f64::INFINITY
            }
        } else if err == 0.0 {
            0.0
        } else if tol > 0.0 {
            err / tol
        } else {
            f64::INFINITY
        };
        self.abs = self.abs.max(if err.is_nan() { 0.0 } else { err });
        if ratio > self.ratio || (self.at.is_empty() && ratio >= self.ratio) {
            self.ratio = ratio;
            self.at = at();
        }
    }
}

/// Worst errors of a replay against the trace, per kind.
#[derive(Clone, Debug, Default)]
pub struct Comparison {
    /// Final parameters.
    pub params: Worst,
    /// First moments.
    pub exp_avg: Worst,
    /// Second moments.
    pub exp_avg_sq: Worst,
    /// AMSGrad maxima (amsgrad traces only).
    pub max_exp_avg_sq: Option<Worst>,
    /// Learning rates of every step.
    pub lr: Worst,
    /// beta1 of every step (schedules that cycle momentum; the lr tolerance).
    pub beta1: Option<Worst>,
    /// AMP traces: steps skipped where PyTorch did not, or the reverse (ratio 0 or infinite).
    pub skipped: Option<Worst>,
    /// Master-weight traces: the engine's 16-bit parameters (`final_model/`).
    pub model: Option<Worst>,
    /// EMA traces: the averaged weights (`final_ema/`; the parameters' tolerance).
    pub ema: Option<Worst>,
    /// GradScaler traces: the scale of every step, the final scale and growth tracker
    /// (exact: ratio 0 or infinite).
    pub scaler: Option<Worst>,
}

impl Comparison {
    /// Every kind within tolerance.
    pub fn passed(&self) -> bool {
        let ok = |w: &Worst| w.ratio <= 1.0;
        ok(&self.params)
            && ok(&self.exp_avg)
            && ok(&self.exp_avg_sq)
            && self.max_exp_avg_sq.as_ref().is_none_or(ok)
            && ok(&self.lr)
            && self.beta1.as_ref().is_none_or(ok)
            && self.skipped.as_ref().is_none_or(ok)
            && self.model.as_ref().is_none_or(ok)
            && self.scaler.as_ref().is_none_or(ok)
            && self.ema.as_ref().is_none_or(ok)
    }

    /// The rows `(kind, worst)` for printing.
    pub fn rows(&self) -> Vec<(&'static str, &Worst)> {
        let mut rows = vec![
            ("params", &self.params),
            ("exp_avg", &self.exp_avg),
            ("exp_avg_sq", &self.exp_avg_sq),
        ];
        if let Some(w) = &self.max_exp_avg_sq {
            rows.push(("max_exp_avg_sq", w));
        }
        rows.push(("lr", &self.lr));
        if let Some(w) = &self.beta1 {
            rows.push(("beta1", w));
        }
        if let Some(w) = &self.skipped {
            rows.push(("skipped", w));
        }
        if let Some(w) = &self.model {
            rows.push(("model", w));
        }
        if let Some(w) = &self.scaler {
            rows.push(("scaler", w));
        }
        if let Some(w) = &self.ema {
            rows.push(("ema", w));
        }
        rows
    }
}

/// 16-bit tolerance: every element within this many ulps of the 16-bit type...
pub const ULPS16: f64 = 8.0;
/// ...and at most this fraction of a kind's elements not bit-identical.
pub const NOT_IDENTICAL16: f64 = 0.01;

/// The ulp of 16-bit type `ty` at `t` (normal or subnormal; 0 gets the smallest subnormal).
fn ulp16(ty: ElemType, t: f64) -> f64 {
    let (mant, min_exp) = match ty {
        ElemType::F16 => (10, -14),
        _ => (7, -126),
    };
    let e = if t == 0.0 || !t.is_finite() {
        min_exp
    } else {
        (t.abs().log2().floor() as i32).max(min_exp)
    };
    2f64.powi(e - mant)
}

/// Worst of a 16-bit kind over its tensors `(got, want, name)`.
fn compare16(ty: ElemType, tensors: &[(&[f32], &[f32], &str)]) -> Worst {
    let mut w = Worst::default();
    let (mut max_ulps, mut differ, mut total) = (0.0f64, 0usize, 0usize);
    for &(got, want, name) in tensors {
        w.wrong_count(name.to_string(), got.len(), want.len());
        for (i, (&x, &t)) in got.iter().zip(want).enumerate() {
            total += 1;
            if x.to_bits() == t.to_bits() || (x.is_nan() && t.is_nan()) {
                continue;
            }
            differ += 1;
            let (x, t) = (f64::from(x), f64::from(t));
            let ulps = if x.is_finite() && t.is_finite() {
                (x - t).abs() / ulp16(ty, t)
            } else {
                f64::INFINITY
            };
            w.abs = w.abs.max((x - t).abs());
            if ulps > max_ulps || w.at.is_empty() {
                max_ulps = max_ulps.max(ulps);
                w.at = format!("{name}[{i}]");
            }
        }
    }
    let frac = if total == 0 {
        0.0
    } else {
        differ as f64 / total as f64
    };
    w.ratio = w.ratio.max((max_ulps / ULPS16).max(frac / NOT_IDENTICAL16));
    w.bits16 = Some((max_ulps, frac));
    w
}

/// Compares a replay with the trace's recorded PyTorch values.
pub fn compare(trace: &Trace, out: &ReplayOutput) -> Comparison {
    let mut c = Comparison {
        max_exp_avg_sq: trace.config.amsgrad.then(Worst::default),
        ..Default::default()
    };
    let empty = Vec::new();
    let nth = |v: &[Vec<f32>], i: usize| v.get(i).unwrap_or(&empty).clone();
    let cmp = |w: &mut Worst, got: &[f32], want: &[f32], name: &str, atol: f64, rtol: f64| {
        w.wrong_count(name.to_string(), got.len(), want.len());
        // Moments (no absolute term) also get MOMENT_MAX_RTOL of the tensor's largest value.
        let atol = if atol == 0.0 {
            MOMENT_MAX_RTOL * want.iter().fold(0.0f64, |a, &b| a.max(f64::from(b).abs()))
        } else {
            atol
        };
        for (i, (&x, &t)) in got.iter().zip(want).enumerate() {
            let t = f64::from(t);
            w.add(f64::from(x), t, atol + rtol * t.abs(), || {
                format!("{name}[{i}]")
            });
        }
    };
    c.params
        .wrong_count("tensors".into(), out.params.len(), trace.params.len());
    for (i, p) in trace.params.iter().enumerate() {
        cmp(
            &mut c.params,
            &nth(&out.params, i),
            &p.final_param,
            &p.name,
            PARAM_ATOL,
            PARAM_RTOL,
        );
        cmp(
            &mut c.exp_avg,
            &nth(&out.exp_avg, i),
            &p.final_exp_avg,
            &p.name,
            0.0,
            MOMENT_RTOL,
        );
        cmp(
            &mut c.exp_avg_sq,
            &nth(&out.exp_avg_sq, i),
            &p.final_exp_avg_sq,
            &p.name,
            0.0,
            MOMENT_RTOL,
        );
        if let (Some(w), Some(want), Some(got)) = (
            c.max_exp_avg_sq.as_mut(),
            &p.final_max_exp_avg_sq,
            out.max_exp_avg_sq.as_ref(),
        ) {
            cmp(w, &nth(got, i), want, &p.name, 0.0, MOMENT_RTOL);
        }
    }
    // 16-bit kinds: the ulp rule instead.
    let prec = trace.config.precision;
    let kind16 = |got: &[Vec<f32>], want: &dyn Fn(&TraceParam) -> Option<&[f32]>, ty: ElemType| {
        let rows: Vec<(&[f32], &[f32], &str)> = trace
            .params
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                Some((
                    got.get(i).map_or(&[][..], Vec::as_slice),
                    want(p)?,
                    p.name.as_str(),
                ))
            })
            .collect();
        compare16(ty, &rows)
    };
    let p_ty = trace_param_dtype(&prec);
    if p_ty.is_16bit() {
        c.params = kind16(&out.params, &|p| Some(&p.final_param), p_ty);
    }
    let s_ty = prec.state_dtype();
    if s_ty.is_16bit() {
        c.exp_avg = kind16(&out.exp_avg, &|p| Some(&p.final_exp_avg), s_ty);
        c.exp_avg_sq = kind16(&out.exp_avg_sq, &|p| Some(&p.final_exp_avg_sq), s_ty);
        if let Some(got) = &out.max_exp_avg_sq {
            c.max_exp_avg_sq = Some(kind16(got, &|p| p.final_max_exp_avg_sq.as_deref(), s_ty));
        }
    }
    if trace.config.ema_decay.is_some() {
        let got = out.ema.clone().unwrap_or_default();
        let e_ty = trace.config.ema_dtype();
        let mut w = if e_ty.is_16bit() {
            kind16(&got, &|p| p.final_ema.as_deref(), e_ty)
        } else {
            let mut w = Worst::default();
            for (i, p) in trace.params.iter().enumerate() {
                if let Some(want) = &p.final_ema {
                    cmp(&mut w, &nth(&got, i), want, &p.name, PARAM_ATOL, PARAM_RTOL);
                }
            }
            w
        };
        w.wrong_count("ema tensors".into(), got.len(), trace.params.len());
        c.ema = Some(w);
    }
    if prec.master_weights {
        let got = out.model.clone().unwrap_or_default();
        let mut w = kind16(&got, &|p| p.final_model.as_deref(), prec.param);
        w.wrong_count("model tensors".into(), got.len(), trace.params.len());
        c.model = Some(w);
    }
    if trace.config.grad_scaler.is_some() {
        // The scaler's state must equal PyTorch's exactly.
        let mut w = Worst::default();
        let want = trace.grad_scale.clone().unwrap_or_default();
        w.wrong_count("grad_scale".into(), out.grad_scale.len(), want.len());
        for (s, (&x, &t)) in out.grad_scale.iter().zip(&want).enumerate() {
            w.add(f64::from(x), f64::from(t), 0.0, || {
                format!("grad_scale/{}", s + 1)
            });
        }
        if let Some(t) = trace.final_scale {
            w.add(f64::from(out.final_scale), f64::from(t), 0.0, || {
                "final_scale".into()
            });
        }
        if let Some(t) = trace.final_growth_tracker {
            w.add(
                f64::from(out.final_growth_tracker),
                f64::from(t),
                0.0,
                || "final_growth_tracker".into(),
            );
        }
        c.scaler = Some(w);
    }
    if let Some(want) = &trace.skipped {
        let mut w = Worst::default();
        w.wrong_count("skipped".into(), out.skipped.len(), want.len());
        for (s, (&x, &t)) in out.skipped.iter().zip(want).enumerate() {
            w.add(f64::from(u8::from(x)), f64::from(u8::from(t)), 0.0, || {
                format!("step {}", s + 1)
            });
        }
        c.skipped = Some(w);
    }
    compare_series(&mut c.lr, "lr", &trace.lr, &out.lr);
    if let Some(want) = &trace.beta1 {
        let mut w = Worst::default();
        compare_series(&mut w, "beta1", want, &out.beta1);
        c.beta1 = Some(w);
    }
    c
}

/// Per-step series (lr, beta1) against the lr tolerance.
fn compare_series(w: &mut Worst, name: &str, want: &[Vec<f64>], got: &[Vec<f32>]) {
    w.wrong_count(format!("{name} groups"), got.len(), want.len());
    for (g, (want, got)) in want.iter().zip(got).enumerate() {
        w.wrong_count(format!("{name}/{g}"), got.len(), want.len());
        let max = want.iter().fold(0.0f64, |a, &b| a.max(b.abs()));
        for (s, (&t, &x)) in want.iter().zip(got).enumerate() {
            w.add(
                f64::from(x),
                t,
                LR_RTOL * t.abs() + LR_MAX_RTOL * max,
                || format!("{name}/{g}[step {}]", s + 1),
            );
        }
    }
}

/// A tensor of a replay's output file: `(name, dtype, shape, little-endian bytes)`.
pub type OutputTensor = (String, Dtype, Vec<usize>, Vec<u8>);

/// The safetensors dtype of an element type (16-bit as `BF16`/`F16`).
fn st_dtype(ty: ElemType) -> Dtype {
    match ty {
        ElemType::F32 => Dtype::F32,
        ElemType::Bf16 => Dtype::BF16,
        ElemType::F16 => Dtype::F16,
    }
}

/// `values` (16-bit ones held widened to f32) as the bytes of type `ty`: f32 as they are,
/// 16-bit narrowed to nearest even (exact for values that came from that type).
fn elem_bytes(values: &[f32], ty: ElemType) -> Vec<u8> {
    match ty {
        ElemType::F32 => values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        _ => values
            .iter()
            .flat_map(|&x| ty.narrow(x).to_le_bytes())
            .collect(),
    }
}

/// The trace format a replay of `trace` writes: `adamw-trace/2` when its config uses any /2
/// field (16-bit types, master weights, GradScaler, accumulation, EMA), else `adamw-trace/1`.
pub fn output_format(trace: &Trace) -> &'static str {
    let c = &trace.config;
    let prec = c.precision;
    if !prec.is_f32()
        || prec.master_weights
        || c.grad_scaler.is_some()
        || c.accumulate > 1
        || c.ema_decay.is_some()
    {
        "adamw-trace/2"
    } else {
        "adamw-trace/1"
    }
}

/// The outputs the trace format names for a replay of `trace`, under the format's names and
/// in the trace's dtypes:
/// - `final/NAME` in P (F32 with master weights, else the param type; 16-bit as BF16/F16),
/// - `final_exp_avg/NAME`, `final_exp_avg_sq/NAME` and (amsgrad) `final_max_exp_avg_sq/NAME`
///   in S,
/// - `final_model/NAME` (master weights) in the param's 16-bit type,
/// - `final_ema/NAME` (EMA) in E,
/// - `lr/G` F64 `[steps]`, and `beta1/G` F64 `[steps]` where the trace has `beta1`,
/// - `skipped` U8 `[steps]`,
/// - with a GradScaler: `grad_scale/S` F32 `[1]` for S = 1..=steps (the scale each step
///   used), `final_scale` F32 `[1]`, `final_growth_tracker` I32 `[1]`.
///
/// 16-bit values (held widened to f32 by the replay) are narrowed to nearest even, which is
/// exact for them. An `out` whose tensor or step counts do not match the trace is refused
/// ([`Error::ShapeMismatch`]).
pub fn output_tensors(trace: &Trace, out: &ReplayOutput) -> Result<Vec<OutputTensor>> {
    let config = &trace.config;
    let prec = config.precision;
    let steps = trace.steps as usize;
    let n_params = trace.params.len();
    let mismatch = |what: &str, got: usize, want: usize| {
        Error::ShapeMismatch(format!(
            "replay output: {what} has {got} entries, the trace {want}"
        ))
    };
    // Per-parameter tensors of one kind, each checked against the parameter's length.
    let per_param = |kind: &str, got: &[Vec<f32>]| -> Result<()> {
        if got.len() != n_params {
            return Err(mismatch(kind, got.len(), n_params));
        }
        for (p, v) in trace.params.iter().zip(got) {
            if v.len() != p.init.len() {
                return Err(mismatch(
                    &format!("{kind}/{}", p.name),
                    v.len(),
                    p.init.len(),
                ));
            }
        }
        Ok(())
    };
    let required = |kind: &str, v: Option<&Vec<Vec<f32>>>| -> Result<()> {
        let v =
            v.ok_or_else(|| Error::ShapeMismatch(format!("replay output: no `{kind}` tensors")))?;
        per_param(kind, v)
    };
    per_param("final", &out.params)?;
    per_param("final_exp_avg", &out.exp_avg)?;
    per_param("final_exp_avg_sq", &out.exp_avg_sq)?;
    if config.amsgrad {
        required("final_max_exp_avg_sq", out.max_exp_avg_sq.as_ref())?;
    }
    if prec.master_weights {
        required("final_model", out.model.as_ref())?;
    }
    if config.ema_decay.is_some() {
        required("final_ema", out.ema.as_ref())?;
    }
    let series = |kind: &str, got: &[Vec<f32>]| -> Result<()> {
        if got.len() != trace.groups.len() {
            return Err(mismatch(kind, got.len(), trace.groups.len()));
        }
        match got.iter().position(|g| g.len() != steps) {
            Some(g) => Err(mismatch(&format!("{kind}/{g}"), got[g].len(), steps)),
            None => Ok(()),
        }
    };
    series("lr", &out.lr)?;
    if trace.beta1.is_some() {
        series("beta1", &out.beta1)?;
    }
    if out.skipped.len() != steps {
        return Err(mismatch("skipped", out.skipped.len(), steps));
    }
    if config.grad_scaler.is_some() && out.grad_scale.len() != steps {
        return Err(mismatch("grad_scale", out.grad_scale.len(), steps));
    }

    let (p_ty, s_ty, e_ty) = (
        trace_param_dtype(&prec),
        prec.state_dtype(),
        config.ema_dtype(),
    );
    let mut tensors: Vec<OutputTensor> = Vec::new();
    let mut push_kind = |kind: &str, values: &[Vec<f32>], ty: ElemType| {
        for (p, v) in trace.params.iter().zip(values) {
            tensors.push((
                format!("{kind}/{}", p.name),
                st_dtype(ty),
                vec![v.len()],
                elem_bytes(v, ty),
            ));
        }
    };
    push_kind("final", &out.params, p_ty);
    push_kind("final_exp_avg", &out.exp_avg, s_ty);
    push_kind("final_exp_avg_sq", &out.exp_avg_sq, s_ty);
    if let Some(v) = out.max_exp_avg_sq.as_ref().filter(|_| config.amsgrad) {
        push_kind("final_max_exp_avg_sq", v, s_ty);
    }
    if let Some(v) = out.model.as_ref().filter(|_| prec.master_weights) {
        push_kind("final_model", v, prec.param);
    }
    if let Some(v) = out.ema.as_ref().filter(|_| config.ema_decay.is_some()) {
        push_kind("final_ema", v, e_ty);
    }
    let f64_series = |kind: &str, values: &[Vec<f32>]| -> Vec<OutputTensor> {
        values
            .iter()
            .enumerate()
            .map(|(g, v)| {
                let bytes = v.iter().flat_map(|&x| f64::from(x).to_le_bytes()).collect();
                (format!("{kind}/{g}"), Dtype::F64, vec![v.len()], bytes)
            })
            .collect()
    };
    tensors.extend(f64_series("lr", &out.lr));
    if trace.beta1.is_some() {
        tensors.extend(f64_series("beta1", &out.beta1));
    }
    tensors.push((
        "skipped".into(),
        Dtype::U8,
        vec![steps],
        out.skipped.iter().map(|&s| u8::from(s)).collect(),
    ));
    if config.grad_scaler.is_some() {
        for (s, scale) in out.grad_scale.iter().enumerate() {
            tensors.push((
                format!("grad_scale/{}", s + 1),
                Dtype::F32,
                vec![1],
                scale.to_le_bytes().to_vec(),
            ));
        }
        tensors.push((
            "final_scale".into(),
            Dtype::F32,
            vec![1],
            out.final_scale.to_le_bytes().to_vec(),
        ));
        let tracker = i32::try_from(out.final_growth_tracker).map_err(|_| {
            Error::ShapeMismatch(format!(
                "replay output: growth tracker {} does not fit an I32",
                out.final_growth_tracker
            ))
        })?;
        tensors.push((
            "final_growth_tracker".into(),
            Dtype::I32,
            vec![1],
            tracker.to_le_bytes().to_vec(),
        ));
    }
    Ok(tensors)
}

/// Writes a replay's outputs ([`output_tensors`]) to `path` as safetensors, with metadata
/// `format` ([`output_format`]) and `source` = `wgpu-adamw replay`. The file is written
/// beside `path` under a temporary name of its own, then renamed over it: an interrupted run
/// never leaves half a file.
pub fn write_output(trace: &Trace, out: &ReplayOutput, path: &Path) -> Result<()> {
    let tensors = output_tensors(trace, out)?;
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.as_str(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Serialize(e.to_string()))?;
    let meta = std::collections::HashMap::from([
        ("format".to_string(), output_format(trace).to_string()),
        ("source".to_string(), "wgpu-adamw replay".to_string()),
    ]);
    let bytes =
        safetensors::serialize(views, Some(meta)).map_err(|e| Error::Serialize(e.to_string()))?;
    // Beside the target, then renamed over it: a reader never sees half a file.
    crate::state::atomic_write(path, &bytes).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}
