//! The optimizer's whole state (config, counters, moments) and its checkpoint file.
//!
//! A checkpoint is a safetensors file: `exp_avg/{i}`, `exp_avg_sq/{i}` and (amsgrad)
//! `max_exp_avg_sq/{i}` per tensor `i` in registration order (and, where the config has
//! them, `master/{i}`, `ema/{i}`, `grad_acc/{i}`), `counters` (U32
//! `[scheduler_steps, adam_steps, micro_batches]`), and the config as JSON in the metadata. Both backends
//! read and write the same format, so a run can move between them.

use crate::config::{AdamWConfig, GradNormOrder, GroupConfig, Schedule};
use crate::error::{Error, Result};
use crate::shard::{ShardLayout, ShardMeta};
use crate::twin::Counters;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

/// Format tag in a checkpoint's metadata.
pub const CHECKPOINT_FORMAT: &str = "wgpu-adamw-checkpoint/1";

/// The moments of one tensor.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TensorState {
    /// Index of the tensor's param group.
    pub group: usize,
    /// First moment.
    pub exp_avg: Vec<f32>,
    /// Second moment.
    pub exp_avg_sq: Vec<f32>,
    /// Running maximum of the second moment (amsgrad only).
    pub max_exp_avg_sq: Option<Vec<f32>>,
    /// f32 master weights ([`crate::Precision::master_weights`] only). Moments of a 16-bit
    /// state are held widened (exactly) in f32.
    pub master: Option<Vec<f32>>,
    /// The weight EMA ([`crate::AdamWConfig::ema_decay`] only; 16-bit values widened).
    pub ema: Option<Vec<f32>>,
    /// The gradients accumulated so far in this optimizer step (with
    /// [`crate::AdamWConfig::accumulate`]; 16-bit values widened).
    pub grad_acc: Option<Vec<f32>>,
}

/// Everything needed to resume an optimizer bit for bit.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerState {
    /// Hyperparameters and schedule.
    pub config: AdamWConfig,
    /// Per-group overrides.
    pub groups: Vec<GroupConfig>,
    /// Step counters (schedule position and Adam's `t`).
    pub counters: Counters,
    /// The AMP loss scale (1 when loss scaling is off).
    pub loss_scale: f32,
    /// The schedule's own state (ReduceLROnPlateau: best, bad epochs, cooldown and each
    /// group's lr), as the device keeps it; empty for the closed-form kinds.
    pub schedule_state: Vec<u32>,
    /// The last metric written for ReduceLROnPlateau.
    pub metric: f32,
    /// The lr multiplier of the control buffer.
    pub lr_scale: f32,
    /// The GradScaler's growth tracker (0 without one).
    pub growth_tracker: u32,
    /// Per-tensor moments, in registration order.
    pub tensors: Vec<TensorState>,
    /// A shard's checkpoint ([`crate::shard`]): its rank and layout, and the whole tensors;
    /// `tensors` then holds the rank's pieces. `None` for an unsharded optimizer.
    pub shard: Option<ShardMeta>,
}

fn opt_json(x: Option<f64>) -> Value {
    x.map_or(Value::Null, |v| json!(v))
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::InvalidFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The JSON `optimizer` object of a config, as in the trace format.
pub fn optimizer_json(c: &AdamWConfig) -> Value {
    json!({"lr": c.lr, "betas": [c.betas.0, c.betas.1], "eps": c.eps,
           "weight_decay": c.weight_decay, "amsgrad": c.amsgrad, "maximize": c.maximize})
}

/// Parses the trace format's `optimizer` object (missing keys take PyTorch's defaults).
pub fn parse_optimizer_json(o: &Value) -> Result<AdamWConfig> {
    let d = AdamWConfig::default();
    let o = o
        .as_object()
        .ok_or_else(|| Error::InvalidJson("`optimizer` must be an object".into()))?;
    let num = |k: &str, dflt: f64| -> Result<f64> {
        match o.get(k) {
            None => Ok(dflt),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| Error::InvalidJson(format!("`{k}` must be a number, got {v}"))),
        }
    };
    let flag = |k: &str| -> Result<bool> {
        match o.get(k) {
            None => Ok(false),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| Error::InvalidJson(format!("`{k}` must be a boolean, got {v}"))),
        }
    };
    let betas = match o.get("betas") {
        None => d.betas,
        Some(v) => match v
            .as_array()
            .map(|a| a.iter().map(Value::as_f64).collect::<Vec<_>>())
        {
            Some(b) if b.len() == 2 && b.iter().all(Option::is_some) => {
                (b[0].unwrap(), b[1].unwrap())
            }
            _ => {
                return Err(Error::InvalidJson(format!(
                    "`betas` must be [b1, b2], got {v}"
                )))
            }
        },
    };
    Ok(AdamWConfig {
        lr: num("lr", d.lr)?,
        betas,
        eps: num("eps", d.eps)?,
        weight_decay: num("weight_decay", d.weight_decay)?,
        amsgrad: flag("amsgrad")?,
        maximize: flag("maximize")?,
        ..d
    })
}

impl OptimizerState {
    /// Serializes the state into safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let counters = [self.counters.sched, self.counters.adam, self.counters.micro];
        let counter_bytes: &[u8] = bytemuck::cast_slice(&counters);
        let mut views: Vec<(String, TensorView<'_>)> = Vec::new();
        views.push((
            "counters".into(),
            TensorView::new(Dtype::U32, vec![3], counter_bytes)
                .map_err(|e| Error::Serialize(e.to_string()))?,
        ));
        if !self.schedule_state.is_empty() {
            views.push((
                "schedule_state".into(),
                TensorView::new(
                    Dtype::U32,
                    vec![self.schedule_state.len()],
                    bytemuck::cast_slice(&self.schedule_state),
                )
                .map_err(|e| Error::Serialize(e.to_string()))?,
            ));
        }
        for (i, t) in self.tensors.iter().enumerate() {
            views.push((format!("exp_avg/{i}"), view(&t.exp_avg)?));
            views.push((format!("exp_avg_sq/{i}"), view(&t.exp_avg_sq)?));
            if let Some(m) = &t.max_exp_avg_sq {
                views.push((format!("max_exp_avg_sq/{i}"), view(m)?));
            }
            if let Some(m) = &t.master {
                views.push((format!("master/{i}"), view(m)?));
            }
            if let Some(e) = &t.ema {
                views.push((format!("ema/{i}"), view(e)?));
            }
            if let Some(a) = &t.grad_acc {
                views.push((format!("grad_acc/{i}"), view(a)?));
            }
        }
        let config = json!({
            "optimizer": optimizer_json(&self.config),
            "schedule": self.config.schedule.to_json_value(),
            "steps_per_epoch": self.config.steps_per_epoch,
            "max_grad_norm": self.config.max_grad_norm,
            "loss_scaling": self.config.loss_scaling,
            "grad_norm_order": self.config.grad_norm_order.name(),
            "dtype": self.config.precision.dtype_json(),
            "ema_decay": self.config.ema_decay,
            "accumulate": self.config.accumulate,
            "stochastic_rounding": self.config.stochastic_rounding,
            "master_weights": self.config.precision.master_weights,
            "loss_scale": self.loss_scale,
            "metric": self.metric,
            "lr_scale": self.lr_scale,
            "growth_tracker": self.growth_tracker,
            "grad_scaler": self.config.grad_scaler.map(|s| json!({
                "init_scale": s.init_scale, "growth_factor": s.growth_factor,
                "backoff_factor": s.backoff_factor, "growth_interval": s.growth_interval})),
            "groups": self.groups.iter().map(|g| json!({"lr": opt_json(g.lr), "weight_decay": opt_json(g.weight_decay)})).collect::<Vec<_>>(),
            "tensor_groups": self.tensors.iter().map(|t| t.group).collect::<Vec<_>>(),
            "shard": self.shard.as_ref().map(|m| json!({
                "rank": m.rank, "bounds": m.layout.bounds(),
                "tensors": m.tensors.iter().map(|&(g, n)| [g as u64, n]).collect::<Vec<_>>()})),
        });
        let meta = HashMap::from([
            ("format".to_string(), CHECKPOINT_FORMAT.to_string()),
            ("config".to_string(), config.to_string()),
        ]);
        safetensors::serialize(views, Some(meta)).map_err(|e| Error::Serialize(e.to_string()))
    }

    /// Parses safetensors bytes written by [`OptimizerState::to_bytes`]; `path` names the
    /// source in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(path, format!("not a safetensors file: {e}")))?;
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| bad(path, format!("not a safetensors file: {e}")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(CHECKPOINT_FORMAT) {
            return Err(bad(path, format!("not a {CHECKPOINT_FORMAT} file")));
        }
        let cfg: Value = serde_json::from_str(meta.get("config").map_or("", String::as_str))
            .map_err(|e| bad(path, format!("bad config metadata: {e}")))?;
        let wrap = |e: Error| bad(path, e.to_string());
        let mut config = parse_optimizer_json(&cfg["optimizer"]).map_err(wrap)?;
        config.schedule = Schedule::from_json_value(&cfg["schedule"]).map_err(wrap)?;
        config.steps_per_epoch = cfg["steps_per_epoch"]
            .as_u64()
            .and_then(|k| u32::try_from(k).ok())
            .ok_or_else(|| bad(path, "bad steps_per_epoch"))?;
        config.max_grad_norm = match &cfg["max_grad_norm"] {
            Value::Null => None,
            v => Some(v.as_f64().ok_or_else(|| bad(path, "bad max_grad_norm"))?),
        };
        config.loss_scaling = cfg["loss_scaling"].as_bool().unwrap_or(false);
        config.grad_norm_order = match cfg["grad_norm_order"].as_str() {
            None => GradNormOrder::Compensated,
            Some(name) => {
                GradNormOrder::from_name(name).ok_or_else(|| bad(path, "bad grad_norm_order"))?
            }
        };
        config.precision = crate::Precision::from_json(cfg.get("dtype"), cfg.get("master_weights"))
            .map_err(wrap)?;
        let loss_scale = match &cfg["loss_scale"] {
            Value::Null => 1.0,
            v => v.as_f64().ok_or_else(|| bad(path, "bad loss_scale"))? as f32,
        };
        let f32_or = |key: &str, default: f32| -> Result<f32> {
            match &cfg[key] {
                Value::Null => Ok(default),
                v => Ok(v.as_f64().ok_or_else(|| bad(path, format!("bad {key}")))? as f32),
            }
        };
        config.accumulate = match &cfg["accumulate"] {
            Value::Null => 1,
            v => v
                .as_u64()
                .and_then(|k| u32::try_from(k).ok())
                .ok_or_else(|| bad(path, "bad accumulate"))?,
        };
        config.stochastic_rounding = match &cfg["stochastic_rounding"] {
            Value::Null => None,
            v => Some(
                v.as_u64()
                    .ok_or_else(|| bad(path, "bad stochastic_rounding"))?,
            ),
        };
        config.ema_decay = match &cfg["ema_decay"] {
            Value::Null => None,
            v => Some(v.as_f64().ok_or_else(|| bad(path, "bad ema_decay"))?),
        };
        config.grad_scaler = match &cfg["grad_scaler"] {
            Value::Null => None,
            v => Some(crate::config::parse_grad_scaler_json(v).map_err(wrap)?),
        };
        let growth_tracker = match &cfg["growth_tracker"] {
            Value::Null => 0,
            v => v
                .as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| bad(path, "bad growth_tracker"))?,
        };
        let metric = f32_or("metric", 0.0)?;
        let lr_scale = f32_or("lr_scale", 1.0)?;
        config.validate().map_err(wrap)?;
        let groups = cfg["groups"]
            .as_array()
            .ok_or_else(|| bad(path, "missing groups"))?
            .iter()
            .map(|g| GroupConfig {
                lr: g["lr"].as_f64(),
                weight_decay: g["weight_decay"].as_f64(),
            })
            .collect::<Vec<_>>();
        config.validate_groups(&groups).map_err(wrap)?;
        let tensor_groups = cfg["tensor_groups"]
            .as_array()
            .ok_or_else(|| bad(path, "missing tensor_groups"))?
            .iter()
            .map(|g| g.as_u64().map(|g| g as usize).filter(|&g| g < groups.len()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad(path, "bad tensor_groups"))?;
        let counters = read_u32s(&st, "counters", path)?;
        // [scheduler steps, Adam steps, micro-batches] (files before accumulation: 2 values).
        if !(2..=3).contains(&counters.len()) {
            return Err(bad(path, "`counters` must hold 3 values"));
        }
        let mut tensors = Vec::with_capacity(tensor_groups.len());
        for (i, &group) in tensor_groups.iter().enumerate() {
            let exp_avg = read_f32s(&st, &format!("exp_avg/{i}"), path)?;
            let exp_avg_sq = read_f32s(&st, &format!("exp_avg_sq/{i}"), path)?;
            let max_exp_avg_sq = if config.amsgrad {
                Some(read_f32s(&st, &format!("max_exp_avg_sq/{i}"), path)?)
            } else {
                None
            };
            // Streams the config keeps but a state may lack: the master weights and EMA of an
            // optimizer that has not stepped yet, the accumulator at a step boundary.
            let optional = |kind: &str, kept: bool| -> Result<Option<Vec<f32>>> {
                let name = format!("{kind}/{i}");
                if kept && st.names().contains(&name.as_str()) {
                    read_f32s(&st, &name, path).map(Some)
                } else {
                    Ok(None)
                }
            };
            let master = optional("master", config.precision.master_weights)?;
            let ema = optional("ema", config.ema_decay.is_some())?;
            let grad_acc = optional("grad_acc", config.accumulate > 1)?;
            let n = exp_avg.len();
            if ema.as_ref().is_some_and(|e| e.len() != n)
                || grad_acc.as_ref().is_some_and(|a| a.len() != n)
            {
                return Err(bad(
                    path,
                    format!("tensor {i}: an EMA or accumulator of another length"),
                ));
            }
            if exp_avg_sq.len() != n
                || max_exp_avg_sq.as_ref().is_some_and(|m| m.len() != n)
                || master.as_ref().is_some_and(|m| m.len() != n)
            {
                return Err(bad(
                    path,
                    format!("tensor {i}: moments of different lengths"),
                ));
            }
            tensors.push(TensorState {
                group,
                exp_avg,
                exp_avg_sq,
                max_exp_avg_sq,
                master,
                ema,
                grad_acc,
            });
        }
        let schedule_state = if st.names().contains(&"schedule_state") {
            read_u32s(&st, "schedule_state", path)?
        } else {
            Vec::new()
        };
        let extra = usize::from(!schedule_state.is_empty());
        let masters = tensors
            .iter()
            .map(|t| {
                usize::from(t.master.is_some())
                    + usize::from(t.ema.is_some())
                    + usize::from(t.grad_acc.is_some())
            })
            .sum::<usize>();
        let per_tensor = 2 + usize::from(config.amsgrad);
        if st.len() != 1 + extra + masters + tensors.len() * per_tensor {
            return Err(bad(path, "unexpected extra tensors"));
        }
        let shard = match &cfg["shard"] {
            Value::Null => None,
            v => Some(parse_shard_json(v, groups.len()).map_err(|e| bad(path, e))?),
        };
        if let Some(m) = &shard {
            let pieces = m.pieces().map_err(|e| bad(path, e.to_string()))?;
            let fits = pieces.len() == tensors.len()
                && pieces.iter().zip(&tensors).all(|(p, t)| {
                    p.len == t.exp_avg.len() as u64 && t.group == m.tensors[p.tensor].0
                });
            if !fits {
                return Err(bad(
                    path,
                    "the tensors are not the pieces of its shard layout",
                ));
            }
        }
        Ok(Self {
            shard,
            config,
            groups,
            counters: Counters {
                sched: counters[0],
                adam: counters[1],
                micro: counters.get(2).copied().unwrap_or(0),
            },
            loss_scale,
            schedule_state,
            metric,
            lr_scale,
            growth_tracker,
            tensors,
        })
    }

    /// Writes the checkpoint atomically: to a temporary file of its own beside `path`
    /// (unique per save, so concurrent saves never share one), flushed to disk, then renamed
    /// over `path`. A reader of `path` sees either the previous complete file or the new one,
    /// never a partial one, whatever other threads or processes save at the same time; the
    /// last rename wins. An existing file keeps its permissions; a read-only one is refused
    /// (an [`Error::Io`] of kind `PermissionDenied`) and left as it is.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.to_bytes()?;
        atomic_write(path, &bytes).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads a checkpoint written by [`OptimizerState::save`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// Checks that this state fits an optimizer with `config`, `groups` and tensors of
    /// `lens` elements (each with its group index) and `schedule_state_len` words of
    /// schedule state. The groups' lr and weight decay may differ: loading adopts the
    /// file's, as PyTorch's `load_state_dict` does.
    pub fn check_matches(
        &self,
        config: &AdamWConfig,
        groups: &[GroupConfig],
        tensors: &[(usize, usize)],
        schedule_state_len: usize,
    ) -> Result<()> {
        let mismatch = |s: String| Err(Error::CheckpointMismatch(s));
        if (
            self.config.loss_scaling,
            self.config.max_grad_norm.is_some(),
            self.config.grad_scaler.is_some(),
        ) != (
            config.loss_scaling,
            config.max_grad_norm.is_some(),
            config.grad_scaler.is_some(),
        ) {
            return mismatch("loss scaling or clipping differs from this optimizer's".into());
        }
        if self.config.schedule.kind() != config.schedule.kind() {
            return mismatch(format!(
                "the schedule is `{}` in the checkpoint, `{}` here",
                self.config.schedule.kind(),
                config.schedule.kind()
            ));
        }
        if self.config.amsgrad != config.amsgrad {
            return mismatch(format!(
                "amsgrad is {} in the checkpoint, {} here",
                self.config.amsgrad, config.amsgrad
            ));
        }
        if self.config.stochastic_rounding != config.stochastic_rounding {
            return mismatch(format!(
                "stochastic rounding {:?} in the checkpoint, {:?} here",
                self.config.stochastic_rounding, config.stochastic_rounding
            ));
        }
        if self.config.accumulate != config.accumulate {
            return mismatch(format!(
                "{} micro-batches per step in the checkpoint, {} here",
                self.config.accumulate, config.accumulate
            ));
        }
        if self.config.ema_decay.is_some() != config.ema_decay.is_some() {
            return mismatch(
                "a weight EMA in one of the checkpoint and this optimizer only".into(),
            );
        }
        if self.config.precision != config.precision {
            return mismatch(format!(
                "the precision is {:?} in the checkpoint, {:?} here",
                self.config.precision, config.precision
            ));
        }
        if self.groups.len() != groups.len() {
            return mismatch(format!(
                "{} param groups in the checkpoint, {} here",
                self.groups.len(),
                groups.len()
            ));
        }
        if self.tensors.len() != tensors.len() {
            return mismatch(format!(
                "{} tensors in the checkpoint, {} here",
                self.tensors.len(),
                tensors.len()
            ));
        }
        for (i, (t, &(group, len))) in self.tensors.iter().zip(tensors).enumerate() {
            if t.exp_avg.len() != len || t.group != group {
                return mismatch(format!(
                    "tensor {i}: {} elements in group {} in the checkpoint, {len} in group {group} here",
                    t.exp_avg.len(),
                    t.group
                ));
            }
            let vmax_len = t.max_exp_avg_sq.as_ref().map(Vec::len);
            let master_len = t.master.as_ref().map(Vec::len);
            if t.exp_avg_sq.len() != len
                || vmax_len != config.amsgrad.then_some(len)
                || master_len.is_some_and(|m| m != len || !config.precision.master_weights)
            {
                return mismatch(format!(
                    "tensor {i}: its moments have different lengths or max_exp_avg_sq does not match amsgrad"
                ));
            }
        }
        if self.schedule_state.len() != schedule_state_len {
            return mismatch(format!(
                "{} words of schedule state in the checkpoint, {schedule_state_len} here",
                self.schedule_state.len()
            ));
        }
        if self.counters.at_limit() {
            return Err(Error::StepLimit(format!(
                "the state's counters ({}, {}) are at 2^32 - 1: no further step can be taken",
                self.counters.sched, self.counters.adam
            )));
        }
        Ok(())
    }
}

/// The `shard` metadata of a checkpoint: `{"rank", "bounds", "tensors": [[group, len], ..]}`.
fn parse_shard_json(v: &Value, n_groups: usize) -> std::result::Result<ShardMeta, String> {
    let u64s =
        |v: &Value| -> Option<Vec<u64>> { v.as_array()?.iter().map(Value::as_u64).collect() };
    let rank = v["rank"].as_u64().ok_or("bad shard rank")? as usize;
    let bounds = u64s(&v["bounds"]).ok_or("bad shard bounds")?;
    let layout = ShardLayout::new(bounds).map_err(|e| e.to_string())?;
    let tensors = v["tensors"]
        .as_array()
        .ok_or("bad shard tensors")?
        .iter()
        .map(|t| match u64s(t).as_deref() {
            Some(&[g, n]) if (g as usize) < n_groups => Some((g as usize, n)),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .ok_or("bad shard tensors")?;
    if rank >= layout.ranks() {
        return Err(format!("shard rank {rank} of {} ranks", layout.ranks()));
    }
    Ok(ShardMeta {
        rank,
        layout,
        tensors,
    })
}

fn view(data: &[f32]) -> Result<TensorView<'_>> {
    TensorView::new(Dtype::F32, vec![data.len()], bytemuck::cast_slice(data))
        .map_err(|e| Error::Serialize(e.to_string()))
}

fn read_f32s(st: &safetensors::SafeTensors<'_>, name: &str, path: &Path) -> Result<Vec<f32>> {
    let t = st
        .tensor(name)
        .map_err(|_| bad(path, format!("missing tensor `{name}`")))?;
    if t.dtype() != Dtype::F32 || t.shape().len() != 1 {
        return Err(bad(path, format!("`{name}` must be a 1-D F32 tensor")));
    }
    Ok(bytemuck::pod_collect_to_vec(t.data()))
}

fn read_u32s(st: &safetensors::SafeTensors<'_>, name: &str, path: &Path) -> Result<Vec<u32>> {
    let t = st
        .tensor(name)
        .map_err(|_| bad(path, format!("missing tensor `{name}`")))?;
    if t.dtype() != Dtype::U32 || t.shape().len() != 1 {
        return Err(bad(path, format!("`{name}` must be a 1-D U32 tensor")));
    }
    Ok(bytemuck::pod_collect_to_vec(t.data()))
}

/// Writes `bytes` to `path` through a unique temporary file in the same directory, then
/// renames it into place (see [`OptimizerState::save`]).
pub(crate) fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    static SAVES: AtomicU64 = AtomicU64::new(0);

    let permissions = match std::fs::metadata(path) {
        Ok(m) if m.permissions().readonly() => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "the file is read-only; not replacing it",
            ))
        }
        Ok(m) => Some(m.permissions()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"))?;
    // A name no other save uses: process, a per-process counter, and the clock (in case a
    // previous process with the same id left a file behind, `create_new` still refuses it).
    let (tmp, mut file) = loop {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(
            ".{}-{}-{nanos}.tmp",
            std::process::id(),
            SAVES.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp = dir.join(tmp_name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
        {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    };
    let written = (|| {
        file.write_all(bytes)?;
        if let Some(p) = permissions {
            file.set_permissions(p)?;
        }
        file.sync_all()
    })();
    drop(file);
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // Make the rename itself durable (where directories can be opened and synced).
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
