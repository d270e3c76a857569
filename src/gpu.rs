//! The host driver of the fused kernel: registers the engine's buffers, lays out the
//! optimizer's own state, and records one optimizer step as one compute pass.

use crate::config::{AdamWConfig, GradNormOrder, GroupConfig};
use crate::error::{Error, Result};
use crate::kernel::{
    DispatchInfo, Globals, Kernel, CONTROL_GROWTH_TRACKER, CONTROL_LR_SCALE, CONTROL_METRIC,
    CONTROL_SCALE, CONTROL_WORDS, COUNTER_ADAM, COUNTER_MICRO, COUNTER_SCHED, COUNTER_WORDS,
    ELEMS_PER_THREAD, SCALAR_WORDS, STEP_SKIPPED, VIEWS_F32, VIEWS_VEC4, WORKGROUP,
};
use crate::plan::{window_of, GpuPlan, PlanLimits, PlanTensor, TableLayout, TensorInfo};
use crate::precision::{Dtype, Precision};
use crate::schedule::program::{plateau_lr_at, split, Region};
use crate::shard::{ShardLayout, ShardMeta};
use crate::state::{OptimizerState, TensorState};
use crate::twin::Counters;
use std::collections::HashMap;

/// One tensor handed to the optimizer: its parameters and gradients live in the engine's own
/// buffers, as `len` elements of the optimizer's [`Precision`] starting at a byte offset.
/// Both buffers need `BufferUsages::STORAGE`; offsets must be multiples of the element size
/// (4 for f32, 2 for 16-bit types), and a buffer of 16-bit elements must be a whole number of
/// 32-bit words long. With master weights or a weight EMA the optimizer reads the
/// parameters once at creation: their buffer then needs `BufferUsages::COPY_SRC` too.
#[derive(Clone, Debug)]
pub struct TensorBinding {
    /// Buffer holding the parameters.
    pub param: wgpu::Buffer,
    /// Byte offset of the first parameter.
    pub param_offset: u64,
    /// Buffer holding the gradients (may be the same buffer as `param`).
    pub grad: wgpu::Buffer,
    /// Byte offset of the first gradient.
    pub grad_offset: u64,
    /// Number of elements.
    pub len: u64,
}

impl TensorBinding {
    /// A tensor whose parameters and gradients each fill a whole buffer.
    pub fn whole(param: &wgpu::Buffer, grad: &wgpu::Buffer) -> Self {
        Self {
            param: param.clone(),
            param_offset: 0,
            grad: grad.clone(),
            grad_offset: 0,
            len: param.size() / 4,
        }
    }
}

/// A param group: its hyperparameter overrides and its tensors.
#[derive(Clone, Debug, Default)]
pub struct ParamGroup {
    /// Overrides of the optimizer's lr and weight decay.
    pub config: GroupConfig,
    /// The group's tensors.
    pub tensors: Vec<TensorBinding>,
}

/// Options of [`GpuAdamW::with_options`].
#[derive(Clone, Copy, Debug, Default)]
pub struct GpuOptions {
    /// Use at most this many bytes per storage binding (default: the device's
    /// `max_storage_buffer_binding_size`). Lowering it exercises the splitting of large
    /// tensors across bindings without allocating gigabytes.
    pub max_binding_size: Option<u64>,
    /// Elements per invocation of the update (default [`ELEMS_PER_THREAD`], 1..=255): a
    /// workgroup of 256 invocations handles `256 * elems_per_thread` elements.
    pub elems_per_thread: Option<u32>,
    /// How f16 elements are converted (only with an f16 [`crate::Precision`]).
    pub f16: F16Path,
}

/// How the kernel converts f16 elements. Both paths give the same bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum F16Path {
    /// Native where a probe at creation finds the device's conversions bit-identical to
    /// the packed ones (correct rounding, subnormals, overflow), else packed. Packed on the
    /// web (wasm32), where the probe's read-back cannot block.
    #[default]
    Auto,
    /// Integer operations on the 16-bit patterns: correctly rounded on every adapter.
    Packed,
    /// The device's own f16 conversion instructions (WGSL's `pack2x16float` and
    /// `unpack2x16float`, whose rounding WGSL leaves to the device): an
    /// [`Error::Unsupported`] where the probe finds them inexact, and on the web (the probe
    /// reads back).
    Native,
}

#[derive(Debug)]
struct Dispatch {
    bind_group: wgpu::BindGroup,
    reduce_bind_group: wgpu::BindGroup,
    /// The `accumulate` bind group (with accumulation).
    accumulate_bind_group: Option<wgpu::BindGroup>,
    /// Grid over all its chunks (`reduce`).
    grid: (u32, u32),
    /// Grids of `update` over its runs and of `update_packed` over its packed chunks.
    run_grid: Option<(u32, u32)>,
    packed_grid: Option<(u32, u32)>,
    /// Workgroups of `tensor_norms` (8 tensors each).
    tensor_groups: u32,
}

/// The optimizer's state buffers for one moment, split into arenas that each fit a binding.
#[derive(Debug)]
struct Arenas {
    exp_avg: Vec<wgpu::Buffer>,
    exp_avg_sq: Vec<wgpu::Buffer>,
    max_exp_avg_sq: Vec<wgpu::Buffer>,
    /// f32 master weights ([`Precision::master_weights`]), at the moments' offsets.
    master: Vec<wgpu::Buffer>,
    /// The weight EMA ([`AdamWConfig::ema_decay`]), at the moments' offsets.
    ema: Vec<wgpu::Buffer>,
    /// Accumulated gradients ([`AdamWConfig::accumulate`]), at the moments' offsets.
    grad_acc: Vec<wgpu::Buffer>,
}

impl Arenas {
    fn buffers(&self) -> impl Iterator<Item = &wgpu::Buffer> {
        self.exp_avg
            .iter()
            .chain(&self.exp_avg_sq)
            .chain(&self.max_exp_avg_sq)
            .chain(&self.master)
            .chain(&self.ema)
            .chain(&self.grad_acc)
    }
}

/// Where one tensor's gradients are this step, for [`GpuAdamW::set_grads`]: `len` elements
/// of the optimizer's gradient type at byte offset `offset` of `buffer`, under the rules of
/// [`TensorBinding`]'s `grad`.
#[derive(Clone, Debug)]
pub struct GradBinding {
    /// Buffer holding the gradients.
    pub buffer: wgpu::Buffer,
    /// Byte offset of the first gradient.
    pub offset: u64,
    /// Number of elements: the tensor's length, as registered.
    pub len: u64,
}

/// AdamW with an on-device learning-rate schedule, updating the engine's buffers in place.
///
/// Each optimizer step is one compute pass with one `prologue` dispatch (step counters, the
/// schedule's lr, bias corrections) and one `update` dispatch per distinct pair of
/// param/grad buffer windows: an engine that keeps its parameters in one buffer and its
/// gradients in another gets two dispatches per step, whatever its number of tensors.
/// Nothing is computed on the host per step and nothing is read back.
#[derive(Debug)]
pub struct GpuAdamW {
    device: wgpu::Device,
    queue: wgpu::Queue,
    config: AdamWConfig,
    /// Each group's overrides, as changed at run time ([`GpuAdamW::set_base_lr`]) or loaded.
    groups: std::sync::RwLock<Vec<GroupConfig>>,
    kernel: Kernel,
    globals: Globals,
    meta: wgpu::Buffer,
    amp: wgpu::Buffer,
    uniform: wgpu::Buffer,
    partials: wgpu::Buffer,
    uniforms: UniformLayout,
    /// Where the tables that depend on the gradients' places sit in `meta`.
    tables: TableLayout,
    arenas: Arenas,
    tensors: Vec<TensorInfo>,
    /// Each tensor's parameters: buffer and byte offset (fixed for the optimizer's life).
    params: Vec<(wgpu::Buffer, u64)>,
    plan_limits: PlanLimits,
    prologue_bind_group: wgpu::BindGroup,
    dispatches: Vec<Dispatch>,
    /// Bind groups of the dispatches, kept for re-pointed gradients.
    bind_groups: HashMap<BindKey, DispatchBindGroups>,
    /// The parameters' byte ranges in each buffer, sorted: `(start, end, tensor)`.
    param_ranges: HashMap<wgpu::Buffer, ParamRanges>,
    /// Uploads the tables of re-pointed gradients in command order.
    belt: wgpu::util::StagingBelt,
    /// The uniform block as last uploaded (re-pointing often leaves it unchanged).
    uniform_bytes: Vec<u8>,
    /// The tables as last uploaded and where the gradients' places are in them, while
    /// every gradient buffer is bound whole.
    grad_patch: Option<GradPatch>,
    /// What fills the bindings of the views a dispatch does not use (one buffer each: two
    /// writable bindings of one buffer may not overlap).
    stand_ins: [wgpu::Buffer; 2],
    max_binding_size: u64,
    native_f16: bool,
    /// This optimizer's shard, where it is one ([`GpuAdamW::shard`]).
    shard: Option<ShardMeta>,
    /// The `fold_partials` bind group (globals, partials).
    fold_bind_group: wgpu::BindGroup,
}

/// Where a shard's gradient-norm entries are exchanged ([`GpuAdamW::exchange`]): all in one
/// buffer of the optimizer (`STORAGE | COPY_SRC | COPY_DST`). Each entry is 16 bytes, the
/// words `[hi, lo, flags, 0]`: the sum of squares of the unscaled gradients as an unevaluated
/// f32 pair, and the non-finite flags.
#[derive(Clone, Debug)]
pub struct ShardExchange {
    /// The buffer.
    pub buffer: wgpu::Buffer,
    /// Byte offset of this rank's own entry, written by [`GpuAdamW::encode_partials`].
    pub local: u64,
    /// Byte offset of the gathered entries: rank `r`'s at `gathered + 16 r`, for every rank,
    /// this one included; the engine writes them before [`GpuAdamW::encode_apply`] runs.
    ///
    /// With gradient accumulation ([`AdamWConfig::accumulate`] `= k`) only the `k`-th call
    /// of a step reads them: the other calls only accumulate, so the engine exchanges once
    /// per optimizer step, on the call that completes it.
    pub gathered: u64,
    /// Number of ranks.
    pub ranks: usize,
}

impl ShardExchange {
    /// Bytes of one entry.
    pub const ENTRY_BYTES: u64 = 16;
}

impl GpuAdamW {
    /// Creates the optimizer on the engine's `device` and `queue` for `groups` of tensors.
    pub fn new(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        config: AdamWConfig,
        groups: Vec<ParamGroup>,
    ) -> Result<Self> {
        Self::with_options(device, queue, config, groups, GpuOptions::default())
    }

    /// [`GpuAdamW::new`] with [`GpuOptions`].
    ///
    /// With master weights or an EMA it reads the engine's parameters back (their starting
    /// values) and waits: on the web (wasm32) that is an [`Error::Unsupported`]; use
    /// [`GpuAdamW::with_options_async`] there.
    pub fn with_options(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        config: AdamWConfig,
        groups: Vec<ParamGroup>,
        options: GpuOptions,
    ) -> Result<Self> {
        Self::create(device, queue, config, groups, options, None)
    }

    /// [`GpuAdamW::with_options`], or a shard's ([`GpuAdamW::shard`]) where `shard` is given
    /// (`groups` are then its pieces).
    fn create(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        config: AdamWConfig,
        groups: Vec<ParamGroup>,
        options: GpuOptions,
        shard: Option<ShardMeta>,
    ) -> Result<Self> {
        let ranks = shard.as_ref().map(|m| m.layout.ranks() as u32);
        let mut opt = Self::build(device, queue, config, &groups, options, ranks)?;
        opt.shard = shard;
        if opt.reads_weights() {
            let words = read_buffers(device, queue, &weight_ranges(&groups, &opt.config))?;
            opt.init_weights(&groups, &words)?;
        }
        Ok(opt)
    }

    /// [`GpuAdamW::new`] without blocking: the form for the web (wasm32), where the
    /// parameters' starting values for master weights or an EMA are read back
    /// asynchronously (the browser polls the device; natively, something must).
    pub async fn new_async(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        config: AdamWConfig,
        groups: Vec<ParamGroup>,
    ) -> Result<Self> {
        Self::with_options_async(device, queue, config, groups, GpuOptions::default()).await
    }

    /// [`GpuAdamW::with_options`] without blocking (see [`GpuAdamW::new_async`]).
    pub async fn with_options_async(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        config: AdamWConfig,
        groups: Vec<ParamGroup>,
        options: GpuOptions,
    ) -> Result<Self> {
        let opt = Self::build(device, queue, config, &groups, options, None)?;
        if opt.reads_weights() {
            let words = Readback::start(device, queue, &weight_ranges(&groups, &opt.config))?
                .finish()
                .await?;
            opt.init_weights(&groups, &words)?;
        }
        Ok(opt)
    }

    /// One shard of a ZeRO-1 optimizer ([`crate::shard`]): `groups` are all the tensors of
    /// the model, as every rank registers them, and this optimizer updates (and keeps state
    /// for) only the elements `layout` gives to `rank`. Where the step needs the global
    /// gradient norm (clipping, loss scaling), a step is [`GpuAdamW::encode_partials`], the
    /// engine's all-gather of the ranks' entries into [`GpuAdamW::exchange`], then
    /// [`GpuAdamW::encode_apply`]; without them it is an ordinary step.
    ///
    /// The optimizer's tensors are the rank's pieces ([`ShardMeta::pieces`]): its state,
    /// [`GpuAdamW::set_master_weights`] and [`GpuAdamW::set_grads`] take one entry per piece
    /// ([`GpuAdamW::shard_grads`] makes them for gradients left by a reduce-scatter).
    /// PyTorch's CPU norm order and stochastic rounding are [`Error::Unsupported`] here
    /// (see [`crate::shard`]). With master weights or an EMA it reads the parameters back
    /// and waits, as [`GpuAdamW::with_options`].
    pub fn shard(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        config: AdamWConfig,
        groups: Vec<ParamGroup>,
        layout: &ShardLayout,
        rank: usize,
        options: GpuOptions,
    ) -> Result<Self> {
        crate::shard::check_config(&config)?;
        let prec = config.precision;
        let (groups, meta) = crate::shard::shard_groups(
            &groups,
            layout,
            rank,
            (prec.param.size(), prec.grad.size()),
        )?;
        Self::create(device, queue, config, groups, options, Some(meta))
    }

    /// This optimizer's shard: its rank, the layout and the whole tensors (`None` unless it
    /// was created by [`GpuAdamW::shard`]).
    pub fn shard_meta(&self) -> Option<&ShardMeta> {
        self.shard.as_ref()
    }

    /// Whether a step needs the ranks' gradient-norm entries exchanged between
    /// [`GpuAdamW::encode_partials`] and [`GpuAdamW::encode_apply`]: a shard with clipping or
    /// loss scaling. With accumulation, only on the call that completes a step
    /// ([`ShardExchange::gathered`]).
    pub fn needs_exchange(&self) -> bool {
        self.shard.is_some() && self.config.reduces_gradients()
    }

    /// Where this shard's gradient-norm entries are exchanged (`None` unless
    /// [`GpuAdamW::needs_exchange`]).
    pub fn exchange(&self) -> Option<ShardExchange> {
        if !self.needs_exchange() {
            return None;
        }
        let local = 4 * u64::from(self.globals.tensor_norms_at + 2 * self.globals.n_tensors);
        Some(ShardExchange {
            buffer: self.partials.clone(),
            local,
            gathered: local + ShardExchange::ENTRY_BYTES,
            ranks: self.globals.n_ranks as usize,
        })
    }

    /// A shard's gradients where a reduce-scatter leaves them: the rank's range of the
    /// flattened gradients end to end, from byte `offset` of `buffer` (element
    /// `range.start + i` at byte `offset + i * size`, `size` the gradient type's). One
    /// binding per piece of [`ShardMeta::pieces`], in their order, for
    /// [`GpuAdamW::set_grads`], which checks them. An optimizer that is not a shard is an
    /// [`Error::InvalidArgument`].
    pub fn shard_grads(&self, buffer: &wgpu::Buffer, offset: u64) -> Result<Vec<GradBinding>> {
        let meta = self.shard.as_ref().ok_or_else(|| {
            Error::InvalidArgument(
                "not a shard (GpuAdamW::shard): bind its gradients per tensor".into(),
            )
        })?;
        let size = self.config.precision.grad.size();
        let mut at = offset;
        Ok(meta
            .pieces()?
            .iter()
            .map(|p| {
                let binding = GradBinding {
                    buffer: buffer.clone(),
                    offset: at,
                    len: p.len,
                };
                at += p.len * size;
                binding
            })
            .collect())
    }

    /// Whether creation starts the master weights or the EMA from the engine's parameters.
    fn reads_weights(&self) -> bool {
        self.config.precision.master_weights || self.config.ema_decay.is_some()
    }

    /// Everything of [`GpuAdamW::with_options`] but the starting master weights and EMA.
    fn build(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        config: AdamWConfig,
        groups: &[ParamGroup],
        options: GpuOptions,
        ranks: Option<u32>,
    ) -> Result<Self> {
        let configs: Vec<GroupConfig> = groups.iter().map(|g| g.config).collect();
        config.validate_groups(&configs)?;
        if groups.len() > 1 << 16 {
            return Err(Error::DeviceLimit(format!(
                "{} param groups; at most 65536 are supported",
                groups.len()
            )));
        }
        let limits = device.limits();
        let need = crate::kernel::storage_buffers_per_stage();
        if limits.max_storage_buffers_per_shader_stage < need {
            return Err(Error::DeviceLimit(format!(
                "the update pipeline binds {need} storage buffers per shader stage and the device \
                 allows {}: create it with at least WebGPU's default limits \
                 (wgpu::Limits::default(), {need} per stage; wgpu::Limits::downlevel_defaults() \
                 has 4)",
                limits.max_storage_buffers_per_shader_stage
            )));
        }
        let align = u64::from(limits.min_storage_buffer_offset_alignment).max(4);
        let mut max_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
            .min(1 << 31);
        if let Some(m) = options.max_binding_size {
            max_binding = max_binding.min(m);
        }
        let max_binding = max_binding / align * align;
        let stride = (max_binding / 2) / align * align;
        let ept = options.elems_per_thread.unwrap_or(ELEMS_PER_THREAD);
        if !(1..=255).contains(&ept) {
            return Err(Error::InvalidArgument(format!(
                "elems_per_thread {ept} is outside 1..=255"
            )));
        }
        let chunk = u64::from(WORKGROUP * ept);
        if stride < align || max_binding < 4 * chunk {
            return Err(Error::DeviceLimit(format!(
                "max storage binding size {max_binding} is too small"
            )));
        }

        validate_bindings(groups, &config.precision)?;
        let uses_f16 = [
            config.precision.param,
            config.precision.grad,
            config.precision.state_dtype(),
        ]
        .contains(&Dtype::F16);
        let native_f16 = uses_f16
            && match options.f16 {
                F16Path::Packed => false,
                // The probe reads back, which cannot block on the web: packed (exact
                // everywhere) there.
                F16Path::Auto if cfg!(target_arch = "wasm32") => false,
                F16Path::Auto => crate::probe::native_f16_is_exact(device, queue)?,
                F16Path::Native => {
                    if !crate::probe::native_f16_is_exact(device, queue)? {
                        return Err(Error::Unsupported(
                            "native f16: the device's f16 conversions are not correctly rounded"
                                .into(),
                        ));
                    }
                    true
                }
            };
        let prec = config.precision;
        let mixed = config.needs_mixed_update();

        // Everything that touches the device, in error scopes and with wgpu's panics caught.
        let opt = checked(device, || {
            // The distinct engine buffers, by index (wgpu hashes buffers by identity).
            let (buffers, plan_tensors) =
                plan_tensors(groups.iter().enumerate().flat_map(|(gi, g)| {
                    g.tensors
                        .iter()
                        .map(move |t| (gi, &t.param, t.param_offset, &t.grad, t.grad_offset, t.len))
                }));
            let plan_limits = PlanLimits {
                max_binding,
                stride,
                chunk,
                torch_norm: config.grad_norm_order == GradNormOrder::TorchCpu
                    && config.reduces_gradients(),
                elem_bytes: (prec.param.size(), prec.grad.size()),
                mixed,
            };
            let plan = GpuPlan::new(&plan_tensors, plan_limits)?;
            let kernel = Kernel::new(device, ept, &config, native_f16, ranks.is_some());
            let n_groups = groups.len() as u32;
            let mut globals = Globals::new(&config, n_groups);
            globals.groups_at = COUNTER_WORDS;
            globals.scalars_at = globals.groups_at + 4 * n_groups;
            globals.sched_at = globals.scalars_at + SCALAR_WORDS * n_groups;
            let ctxs: Vec<_> = configs
                .iter()
                .enumerate()
                .map(|(i, g)| config.group_ctx(i, g))
                .collect();
            let region = Region::new(&config.schedule, &ctxs);
            globals.sched_stride = region.stride;
            globals.sched_state_at = region.state_at;
            // The tables that depend on where the gradients are come last, with room for
            // any re-pointing of them ([`GpuAdamW::set_grads`]).
            let tables = plan.table_layout(
                globals.sched_at + region.words.len() as u32,
                config.stochastic_rounding.is_some(),
            );
            globals.n_tensors = plan.tensors.len() as u32;
            globals.tensors_at = tables.tensors_at;
            globals.segments_at = tables.segments_at;
            globals.chunks_at = tables.chunks_at;
            globals.tensor_norms_at = 4 * tables.chunk_capacity as u32;
            if config.stochastic_rounding.is_some() {
                globals.sr_at = tables.sr_at;
            }
            if let Some(ranks) = ranks {
                globals.n_ranks = ranks;
                globals.flags |= crate::kernel::FLAG_SHARDED;
            }
            // A shard's exchange area: its own entry, then one per rank.
            let exchange_words = ranks.map_or(0, |r| 4 * (u64::from(r) + 1));
            let meta_words = tables.end as usize;
            let mut meta_init = vec![0u32; meta_words];
            meta_init[globals.sched_at as usize..][..region.words.len()]
                .copy_from_slice(&region.words);
            for (gi, g) in groups.iter().enumerate() {
                let (lr, wd) = config.resolve(&g.config);
                let at = globals.groups_at as usize + 4 * gi;
                meta_init[at] = (lr as f32).to_bits();
                meta_init[at + 1] = (wd as f32).to_bits();
            }
            let meta = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-adamw meta"),
                size: (meta_words * 4) as u64,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_DST
                    | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            queue.write_buffer(&meta, 0, bytemuck::cast_slice(&meta_init));

            // Uniforms: globals at 0, then one DispatchInfo per dispatch at aligned offsets.
            let ualign = u64::from(limits.min_uniform_buffer_offset_alignment).max(16);
            let globals_size = std::mem::size_of::<Globals>() as u64;
            let uniforms = UniformLayout {
                first_info: globals_size.div_ceil(ualign) * ualign,
                stride: ualign,
            };
            let uniform = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-adamw uniforms"),
                size: uniforms.info_at(tables.key_capacity.max(1)),
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });

            let state_bytes = prec.state_dtype().size();
            let f32_buffer = |label: &str, elems: u64| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: (elems * 4).max(16),
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_DST
                        | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                })
            };
            let state_buffer = |label: &str, elems: u64| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: (elems * state_bytes).div_ceil(4).max(4) * 4,
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_DST
                        | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                })
            };
            let arenas = Arenas {
                exp_avg: plan
                    .arena_fill
                    .iter()
                    .map(|&n| state_buffer("exp_avg", n))
                    .collect(),
                exp_avg_sq: plan
                    .arena_fill
                    .iter()
                    .map(|&n| state_buffer("exp_avg_sq", n))
                    .collect(),
                max_exp_avg_sq: if config.amsgrad {
                    plan.arena_fill
                        .iter()
                        .map(|&n| state_buffer("max_exp_avg_sq", n))
                        .collect()
                } else {
                    vec![state_buffer("max_exp_avg_sq (unused)", 4)]
                },
                master: if prec.master_weights {
                    plan.arena_fill
                        .iter()
                        .map(|&n| f32_buffer("master weights", n))
                        .collect()
                } else {
                    vec![f32_buffer("master weights (unused)", 4)]
                },
                ema: if config.ema_decay.is_some() {
                    let bytes = config.ema_dtype().size();
                    plan.arena_fill
                        .iter()
                        .map(|&n| f32_buffer("weight EMA", (n * bytes).div_ceil(4)))
                        .collect()
                } else {
                    vec![f32_buffer("weight EMA (unused)", 4)]
                },
                grad_acc: if config.accumulate > 1 {
                    let bytes = config.grad_acc_dtype().size();
                    plan.arena_fill
                        .iter()
                        .map(|&n| f32_buffer("accumulated gradients", (n * bytes).div_ceil(4)))
                        .collect()
                } else {
                    Vec::new()
                },
            };
            // New buffers are zeroed by wgpu: the moments start at zero, as PyTorch's.

            let storage = wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC;
            let amp = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-adamw control"),
                size: 4 * CONTROL_WORDS as u64,
                usage: storage,
                mapped_at_creation: false,
            });
            queue.write_buffer(
                &amp,
                0,
                bytemuck::cast_slice(&[
                    config.grad_scaler.map_or(1.0, |s| s.init_scale as f32),
                    0.0,
                    0.0,
                    1.0,
                    0.0,
                    1.0,
                    0.0,
                    1.0,
                ]),
            );
            let partials = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-adamw grad-norm partials"),
                size: (16 * tables.chunk_capacity as u64
                    + 8 * plan.tensors.len() as u64
                    + 4 * exchange_words)
                    .max(16),
                usage: storage,
                mapped_at_creation: false,
            });

            // wgpu resolves a buffer handle by its index in the device's own wgpu::Instance, so a
            // buffer of another instance may name one of the buffers just created here.
            let own: Vec<&wgpu::Buffer> = [&meta, &uniform, &amp, &partials]
                .into_iter()
                .chain(arenas.buffers())
                .collect();
            for (i, t) in groups.iter().flat_map(|g| &g.tensors).enumerate() {
                if own.contains(&&t.param) || own.contains(&&t.grad) {
                    return Err(Error::InvalidTensor {
                        tensor: i,
                        reason:
                            "its buffer is not one of this device's (from another wgpu::Instance?)"
                                .into(),
                    });
                }
            }
            let prologue_bind_group = make_bind_group(
                device,
                "wgpu-adamw prologue",
                &kernel.prologue_layout,
                vec![
                    (0, binding(&uniform, 0, globals_size)),
                    (8, meta.as_entire_binding()),
                    (11, amp.as_entire_binding()),
                    (13, partials.as_entire_binding()),
                ],
            );
            let fold_bind_group = make_bind_group(
                device,
                "wgpu-adamw fold partials",
                &kernel.fold_layout,
                vec![
                    (0, binding(&uniform, 0, globals_size)),
                    (12, partials.as_entire_binding()),
                ],
            );
            let mut opt = Self {
                shard: None,
                fold_bind_group,
                device: device.clone(),
                queue: queue.clone(),
                config,
                groups: std::sync::RwLock::new(configs),
                kernel,
                globals,
                meta,
                amp,
                uniform,
                partials,
                uniforms,
                tables,
                arenas,
                tensors: Vec::new(),
                params: groups
                    .iter()
                    .flat_map(|g| &g.tensors)
                    .map(|t| (t.param.clone(), t.param_offset))
                    .collect(),
                plan_limits,
                prologue_bind_group,
                dispatches: Vec::new(),
                bind_groups: HashMap::new(),
                param_ranges: param_ranges(groups, prec.param),
                belt: wgpu::util::StagingBelt::new(
                    device.clone(),
                    (4 * u64::from(tables.end - tables.tensors_at)
                        + uniforms.info_at(tables.key_capacity))
                    .next_power_of_two()
                    .max(1 << 12),
                ),
                uniform_bytes: Vec::new(),
                grad_patch: None,
                stand_ins: [(); 2].map(|()| {
                    device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("wgpu-adamw view stand-in"),
                        size: 16,
                        usage: wgpu::BufferUsages::STORAGE,
                        mapped_at_creation: false,
                    })
                }),
                max_binding_size: max_binding,
                native_f16,
            };
            let grad_buffers: Vec<wgpu::Buffer> = groups
                .iter()
                .flat_map(|g| &g.tensors)
                .map(|t| t.grad.clone())
                .collect();
            opt.apply_plan(&plan, &buffers, &grad_buffers, None)?;
            opt.tensors = plan.tensors;
            Ok(opt)
        })??;
        Ok(opt)
    }

    /// Whether the kernel converts f16 with the device's own instructions ([`F16Path`]).
    pub fn native_f16(&self) -> bool {
        self.native_f16
    }

    /// The configuration.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Per-group overrides, in group order (with the changes made at run time).
    pub fn groups(&self) -> Vec<GroupConfig> {
        self.groups.read().expect("not poisoned").clone()
    }

    /// The byte in `meta` after the schedule region (and its state, at the region's end).
    fn schedule_end(&self) -> u64 {
        4 * u64::from(self.tables.tensors_at)
    }

    fn n_groups(&self) -> usize {
        self.globals.n_groups as usize
    }

    #[doc(hidden)]
    /// The kernel's uniform block, as uploaded.
    pub fn globals(&self) -> &Globals {
        &self.globals
    }

    /// Number of update dispatches per step: one per distinct param/grad buffer window and
    /// state arena, plus one for the packed chunks of short tensors of each such window that
    /// has both; independent of the number of tensors.
    pub fn dispatches_per_step(&self) -> usize {
        self.dispatches
            .iter()
            .map(|d| usize::from(d.run_grid.is_some()) + usize::from(d.packed_grid.is_some()))
            .sum()
    }

    /// Bytes per storage binding this optimizer splits its work at.
    pub fn max_binding_size(&self) -> u64 {
        self.max_binding_size
    }

    /// Number of registered tensors.
    pub fn num_tensors(&self) -> usize {
        self.tensors.len()
    }

    /// Points the optimizer at new gradients, one [`GradBinding`] per registered tensor in
    /// registration order, for an engine whose gradients are new allocations every step.
    /// Nothing is copied: the dispatches bind the new buffers (their bind groups are kept
    /// and reused while the engine reuses its buffers) and the chunk tables are rewritten
    /// by a copy recorded into `encoder`. Steps recorded after this call, into `encoder` or
    /// into encoders submitted after it, read these gradients; the state, the parameters
    /// and everything else stay as they are.
    ///
    /// Keep the gradient buffers alive, unchanged, until the step that reads them has run.
    /// The optimizer keeps the bind groups of recent gradient buffers (up to 4096 dispatches'
    /// worth, then it starts over), and with them a reference to those buffers: memory the
    /// engine frees may stay allocated until then, or until the optimizer is dropped.
    /// A count or length that differs from the registered tensors', an offset that is not
    /// a multiple of the element size, a range past the buffer's end, a buffer without
    /// `STORAGE`, or gradients that overlap a tensor's parameters is an error, and the
    /// optimizer is left as it was.
    pub fn set_grads(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        grads: &[GradBinding],
    ) -> Result<()> {
        if grads.len() != self.tensors.len() {
            return Err(Error::InvalidArgument(format!(
                "{} gradient bindings for {} registered tensors",
                grads.len(),
                self.tensors.len()
            )));
        }
        for (i, (g, t)) in grads.iter().zip(&self.tensors).enumerate() {
            if g.len != t.len {
                return Err(Error::InvalidTensor {
                    tensor: i,
                    reason: format!(
                        "{} gradient elements for a tensor of {} elements",
                        g.len, t.len
                    ),
                });
            }
        }
        // Every tensor's gradients in the buffer it had (the usual case): the buffers were
        // checked then, and the parameters each buffer holds are known per tensor.
        let same = self
            .grad_patch
            .as_ref()
            .filter(|p| grads.iter().zip(&p.buffers).all(|(g, b)| g.buffer == *b));
        let own: Vec<&wgpu::Buffer> = match same {
            Some(_) => Vec::new(),
            None => [&self.meta, &self.uniform, &self.amp, &self.partials]
                .into_iter()
                .chain(self.arenas.buffers())
                .collect(),
        };
        let ty = self.config.precision.grad;
        for (i, g) in grads.iter().enumerate() {
            let err = |reason: String| Error::InvalidTensor { tensor: i, reason };
            check_range("grad", &g.buffer, g.offset, g.len, ty).map_err(err)?;
            if own.contains(&&g.buffer) {
                return Err(err(
                    "its buffer is not one of this device's (from another wgpu::Instance?)".into(),
                ));
            }
            // Gradients may share bytes with each other (they are only read), not with
            // parameters (they are written).
            let (start, end) = (g.offset, g.offset + ty.size() * g.len);
            let ranges = match same {
                Some(p) => p.param_ranges[i].as_ref(),
                None => self.param_ranges.get(&g.buffer),
            };
            if let Some(ranges) = ranges {
                let after = ranges.partition_point(|r| r.1 <= start);
                if let Some(&(p_start, _, tensor)) = ranges.get(after) {
                    if p_start < end && g.len > 0 {
                        return Err(err(format!(
                            "the gradients of tensor {i} overlap the parameters of tensor {tensor}"
                        )));
                    }
                }
            }
        }
        let elem = ty.size();
        let same = same.is_some();
        if let Some(patch) = self.grad_patch.as_mut().filter(|_| same) {
            // The same buffers, bound whole: the dispatches stand, the places change
            // (or not: an allocator that hands out the same places needs no upload).
            let (mut lo, mut hi) = (usize::MAX, 0);
            for &(word, t, rel) in &patch.fields {
                let place = (grads[t].offset / elem) as u32 + rel;
                if patch.words[word] != place {
                    patch.words[word] = place;
                    (lo, hi) = (lo.min(word), hi.max(word));
                }
            }
            if lo > hi {
                return Ok(());
            }
            let words = std::mem::take(&mut patch.words);
            // Only the words that changed, and those between them.
            self.upload_tables(lo, &words[lo..=hi], None, Some(encoder));
            if let Some(patch) = &mut self.grad_patch {
                patch.words = words;
            }
            return Ok(());
        }
        let (buffers, planned) =
            plan_tensors(self.params.iter().zip(grads).zip(&self.tensors).map(
                |(((param, p_off), g), t)| (t.group, param, *p_off, &g.buffer, g.offset, g.len),
            ));
        let plan = GpuPlan::with_state(&planned, self.plan_limits, Some(&self.tensors))?;
        let grad_buffers: Vec<wgpu::Buffer> = grads.iter().map(|g| g.buffer.clone()).collect();
        self.apply_plan(&plan, &buffers, &grad_buffers, Some(encoder))
    }

    /// Records one optimizer step into `pass`, an open compute pass of the engine's.
    ///
    /// A shard that exchanges norm entries ([`GpuAdamW::needs_exchange`]) records its two
    /// halves instead, [`GpuAdamW::record_partials`] and [`GpuAdamW::record_apply`], with the
    /// engine's all-gather between them: this call would fold the entries of the last
    /// exchange.
    ///
    /// What it leaves behind: a compute pass keeps its state from one dispatch to the next
    /// (WebGPU semantics), and this call sets the pass's **pipeline** (to one of this
    /// optimizer's update pipelines) and **bind group 0** (to one of its own). It
    /// sets no other bind group index and no immediates. An engine dispatch recorded after it
    /// in the same pass must therefore call `set_pipeline` and `set_bind_group` for every
    /// group its own pipeline uses, group 0 included; a dispatch without its own
    /// `set_pipeline` would silently re-run the optimizer's update. [`GpuAdamW::encode_step`]
    /// records the step in a pass of its own and leaves no state behind.
    ///
    /// Errors of the recorded work (a registered buffer destroyed, say) surface when the
    /// engine submits it, through the engine's error scopes or uncaptured-error handler;
    /// [`GpuAdamW::step`] records and submits inside error scopes instead.
    pub fn record_step(&self, pass: &mut wgpu::ComputePass<'_>) {
        self.record_partials(pass);
        self.record_apply(pass);
    }

    /// The first half of [`GpuAdamW::record_step`]: gradient accumulation and the gradient
    /// norm's partial sums; on a shard ([`GpuAdamW::shard`]) also this rank's entry of the
    /// [`GpuAdamW::exchange`]. Leaves pass state as `record_step` does.
    pub fn record_partials(&self, pass: &mut wgpu::ComputePass<'_>) {
        if let Some(accumulate) = &self.kernel.accumulate {
            pass.set_pipeline(accumulate);
            for d in &self.dispatches {
                if let (Some(bg), Some((x, y))) = (&d.accumulate_bind_group, d.run_grid) {
                    pass.set_bind_group(0, bg, &[]);
                    pass.dispatch_workgroups(x, y, 1);
                }
            }
        }
        // The kernel has these pipelines exactly where the config clips or scales the loss.
        if let Some(tensor_norms) = &self.kernel.tensor_norms {
            pass.set_pipeline(tensor_norms);
            for d in self.dispatches.iter().filter(|d| d.tensor_groups > 0) {
                pass.set_bind_group(0, &d.reduce_bind_group, &[]);
                pass.dispatch_workgroups(d.tensor_groups, 1, 1);
            }
        }
        if let Some(reduce) = &self.kernel.reduce {
            pass.set_pipeline(reduce);
            for d in &self.dispatches {
                pass.set_bind_group(0, &d.reduce_bind_group, &[]);
                pass.dispatch_workgroups(d.grid.0, d.grid.1, 1);
            }
        }
        if let Some(fold) = &self.kernel.fold_partials {
            pass.set_pipeline(fold);
            pass.set_bind_group(0, &self.fold_bind_group, &[]);
            pass.dispatch_workgroups(1, 1, 1);
        }
    }

    /// The second half of [`GpuAdamW::record_step`]: the prologue (counters, schedule, the
    /// global norm: on a shard, from the gathered entries of the [`GpuAdamW::exchange`]) and
    /// the update. Leaves pass state as `record_step` does.
    pub fn record_apply(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.kernel.prologue);
        pass.set_bind_group(0, &self.prologue_bind_group, &[]);
        pass.dispatch_workgroups(1, 1, 1);
        if let Some(mixed) = &self.kernel.update_mixed {
            // The mixed plan has runs only.
            pass.set_pipeline(mixed);
            for d in &self.dispatches {
                if let Some((x, y)) = d.run_grid {
                    pass.set_bind_group(0, &d.bind_group, &[]);
                    pass.dispatch_workgroups(x, y, 1);
                }
            }
            return;
        }
        for (pipeline, packed) in [
            (&self.kernel.update, false),
            (&self.kernel.update_packed, true),
        ] {
            let grid = |d: &Dispatch| if packed { d.packed_grid } else { d.run_grid };
            if self.dispatches.iter().any(|d| grid(d).is_some()) {
                pass.set_pipeline(pipeline);
            }
            for d in &self.dispatches {
                if let Some((x, y)) = grid(d) {
                    pass.set_bind_group(0, &d.bind_group, &[]);
                    pass.dispatch_workgroups(x, y, 1);
                }
            }
        }
    }

    /// Records one optimizer step as its own compute pass in `encoder`. Record as many steps
    /// as you like (between the engine's own passes) and submit once: the counters live on
    /// the device, so K recorded steps equal K submitted ones bit for bit.
    pub fn encode_step(&self, encoder: &mut wgpu::CommandEncoder) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("wgpu-adamw step"),
            timestamp_writes: None,
        });
        self.record_step(&mut pass);
    }

    /// [`GpuAdamW::record_partials`] as its own compute pass in `encoder`.
    pub fn encode_partials(&self, encoder: &mut wgpu::CommandEncoder) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("wgpu-adamw step partials"),
            timestamp_writes: None,
        });
        self.record_partials(&mut pass);
    }

    /// [`GpuAdamW::record_apply`] as its own compute pass in `encoder`.
    pub fn encode_apply(&self, encoder: &mut wgpu::CommandEncoder) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("wgpu-adamw step apply"),
            timestamp_writes: None,
        });
        self.record_apply(&mut pass);
    }

    /// [`GpuAdamW::set_grads`] and [`GpuAdamW::step`] in one submit: points the optimizer at
    /// this step's gradients, records the step and submits it, with the device's errors
    /// caught as [`GpuAdamW::step`] catches them. On an error nothing is submitted and the
    /// optimizer is as it was. Keep the gradients alive until the step has run (dropping
    /// them after this returns is enough where the engine's later work, which may reuse
    /// their memory, goes to the same queue).
    pub fn step_with_grads(&mut self, grads: &[GradBinding]) -> Result<wgpu::SubmissionIndex> {
        self.check_steps_alone()?;
        let device = self.device.clone();
        checked(&device, || {
            let mut encoder = self.device.create_command_encoder(&Default::default());
            self.set_grads(&mut encoder, grads)?;
            self.encode_step(&mut encoder);
            Ok(self.queue.submit([encoder.finish()]))
        })?
    }

    /// Records and submits one step; does not wait for it to run. wgpu's validation and
    /// out-of-memory errors (for example an engine buffer destroyed while registered) are
    /// caught with error scopes and returned, never passed to the device's uncaptured-error
    /// handler (whose default panics).
    ///
    /// A shard that exchanges norm entries ([`GpuAdamW::needs_exchange`]) cannot step alone:
    /// that is an [`Error::Unsupported`].
    pub fn step(&self) -> Result<wgpu::SubmissionIndex> {
        self.check_steps_alone()?;
        checked(&self.device, || self.submit_step())
    }

    fn check_steps_alone(&self) -> Result<()> {
        if self.needs_exchange() {
            return Err(Error::Unsupported(
                "a shard with clipping or loss scaling steps as encode_partials, the engine's \
                 all-gather into exchange(), then encode_apply"
                    .into(),
            ));
        }
        Ok(())
    }

    /// [`GpuAdamW::step`] whose device errors come back as an [`Error::Device`] on the web
    /// too: it awaits the error scopes' results, which the browser delivers only after
    /// control returns to it (natively they are ready at once). It does not wait for the
    /// step to run.
    pub async fn step_async(&self) -> Result<wgpu::SubmissionIndex> {
        self.check_steps_alone()?;
        let (index, caught) = in_error_scopes(&self.device, || self.submit_step()).await;
        scoped(index, caught)
    }

    fn submit_step(&self) -> wgpu::SubmissionIndex {
        let mut encoder = self.device.create_command_encoder(&Default::default());
        self.encode_step(&mut encoder);
        self.queue.submit([encoder.finish()])
    }

    /// Reads back the learning rate each group used at the last step (0 before the first).
    pub fn read_lr(&self) -> Result<Vec<f32>> {
        self.read_scalar(0)
    }

    /// Reads back beta1 each group used at the last step (the schedule's where it cycles
    /// momentum; 0 before the first step).
    pub fn read_beta1(&self) -> Result<Vec<f32>> {
        self.read_scalar(6)
    }

    fn read_scalar(&self, word: usize) -> Result<Vec<f32>> {
        let (at, size) = self.scalars_range();
        Ok(scalar_word(&self.read_words(&self.meta, at, size)?, word))
    }

    /// Where the per-step scalars of every group are in `meta`, in bytes: (offset, size).
    fn scalars_range(&self) -> (u64, u64) {
        let at = u64::from(self.globals.scalars_at) * 4;
        (at, 4 * u64::from(SCALAR_WORDS) * self.n_groups() as u64)
    }

    /// Writes the metric ReduceLROnPlateau reads at the next epoch boundary (write epoch
    /// `j`'s metric before the first step of epoch `j + 1`). An engine can instead write it
    /// on the device: it is the f32 at [`GpuAdamW::metric_binding`].
    pub fn set_metric(&self, metric: f32) {
        self.queue.write_buffer(
            &self.amp,
            4 * CONTROL_METRIC as u64,
            bytemuck::bytes_of(&metric),
        );
    }

    /// The buffer and byte offset of the plateau metric (an f32 the engine's validation-loss
    /// kernel may write, or copy into, before a step).
    pub fn metric_binding(&self) -> (&wgpu::Buffer, u64) {
        (&self.amp, 4 * CONTROL_METRIC as u64)
    }

    /// Sets the multiplier applied to every group's scheduled lr (1 by default; takes effect
    /// at the next submit). An engine may write it on the device: the f32 at
    /// [`GpuAdamW::lr_scale_binding`].
    pub fn set_lr_scale(&self, scale: f32) -> Result<()> {
        crate::cpu::check_lr_scale(scale)?;
        self.queue.write_buffer(
            &self.amp,
            4 * CONTROL_LR_SCALE as u64,
            bytemuck::bytes_of(&scale),
        );
        Ok(())
    }

    /// The buffer and byte offset of the lr multiplier (an f32).
    pub fn lr_scale_binding(&self) -> (&wgpu::Buffer, u64) {
        (&self.amp, 4 * CONTROL_LR_SCALE as u64)
    }

    /// Sets group `group`'s base lr from the next submitted step on: the lr the schedule
    /// scales (for a constant schedule, PyTorch's `param_group["lr"] = lr`; for
    /// ReduceLROnPlateau the group's current lr, which later cuts start from; onecycle and
    /// cyclic, whose bounds are their own fields, ignore it as they ignore the group's lr).
    /// No pipeline is rebuilt.
    pub fn set_base_lr(&self, group: usize, lr: f64) -> Result<()> {
        let mut groups = self.groups.write().expect("not poisoned");
        groups[group] = self
            .config
            .changed_group(&groups, group, |gc| gc.lr = Some(lr))?;
        let g = &self.globals;
        let at = 4 * u64::from(g.groups_at + 4 * group as u32);
        self.queue
            .write_buffer(&self.meta, at, bytemuck::bytes_of(&(lr as f32)));
        if self.config.schedule.needs_metric() {
            let (hi, lo) = split(lr);
            let word = g.sched_at as usize + plateau_lr_at(g.sched_state_at, group);
            self.queue.write_buffer(
                &self.meta,
                4 * word as u64,
                bytemuck::cast_slice(&[hi.to_bits(), lo.to_bits()]),
            );
        }
        Ok(())
    }

    /// Sets group `group`'s weight decay from the next submitted step on.
    pub fn set_weight_decay(&self, group: usize, weight_decay: f64) -> Result<()> {
        let mut groups = self.groups.write().expect("not poisoned");
        groups[group] = self
            .config
            .changed_group(&groups, group, |gc| gc.weight_decay = Some(weight_decay))?;
        let at = 4 * u64::from(self.globals.groups_at + 4 * group as u32 + 1);
        self.queue
            .write_buffer(&self.meta, at, bytemuck::bytes_of(&(weight_decay as f32)));
        Ok(())
    }

    /// Reads back the step counters.
    pub fn read_counters(&self) -> Result<Counters> {
        let w = self.read_words(&self.meta, 0, 4 * u64::from(COUNTER_WORDS))?;
        Ok(counters_of(&w))
    }

    /// Whether the last step was skipped (non-finite gradients under loss scaling).
    pub fn read_skipped(&self) -> Result<bool> {
        Ok(self.read_words(&self.meta, 4 * STEP_SKIPPED as u64, 4)?[0] == 1)
    }

    /// The control buffer, 8 words the engine may bind or copy:
    /// `[loss_scale: f32, found_inf: u32, grad_norm: f32, clip_coef: f32, metric: f32,
    /// lr_scale: f32, growth_tracker: u32, scale_used: f32]`. The engine may write the loss
    /// scale (word 0), the plateau metric (word 4) and the lr multiplier (word 5) on the
    /// device; the rest is written by each step. The loss scale is read by every step with
    /// loss scaling on (the buffer has `STORAGE | COPY_DST | COPY_SRC`); with a GradScaler
    /// each step replaces it with the next step's and updates the growth tracker. Words 1-3
    /// and 7 are written by each step with loss scaling or clipping on: whether any gradient
    /// was non-finite, the global L2 norm of the unscaled gradients, the clipping coefficient
    /// applied and the scale the step used.
    pub fn amp_buffer(&self) -> &wgpu::Buffer {
        &self.amp
    }

    /// Writes the loss scale (takes effect at the next submit).
    pub fn set_loss_scale(&self, scale: f32) {
        self.queue
            .write_buffer(&self.amp, 0, bytemuck::bytes_of(&scale));
    }

    /// Reads back the loss scale (with a GradScaler: the next step's).
    pub fn read_loss_scale(&self) -> Result<f32> {
        Ok(f32::from_bits(self.read_words(&self.amp, 0, 4)?[0]))
    }

    /// Reads back the loss scale the last step used and the GradScaler's growth tracker.
    pub fn read_scaler(&self) -> Result<(f32, u32)> {
        let w = self.read_words(&self.amp, 4 * CONTROL_GROWTH_TRACKER as u64, 8)?;
        Ok((f32::from_bits(w[1]), w[0]))
    }

    /// Where the loss scale lives on the device: (the control buffer, byte offset of the
    /// f32). The engine multiplies its loss by it in its own kernel (binding it read-only),
    /// with no read-back; with a GradScaler the optimizer's step updates it for the next
    /// step.
    pub fn loss_scale_binding(&self) -> (&wgpu::Buffer, u64) {
        (&self.amp, 4 * CONTROL_SCALE as u64)
    }

    /// Reads back `found_inf` of the last step (loss scaling or clipping on).
    pub fn read_found_inf(&self) -> Result<bool> {
        Ok(self.read_words(&self.amp, 4, 4)?[0] != 0)
    }

    /// Reads back the global gradient norm of the last step (loss scaling or clipping on).
    pub fn read_grad_norm(&self) -> Result<f32> {
        Ok(f32::from_bits(self.read_words(&self.amp, 8, 4)?[0]))
    }

    /// Records a copy of the 4 words of [`GpuAdamW::amp_buffer`] into `dst` at `offset`, to
    /// log `found_inf` and the gradient norm of every step without waiting on the device.
    /// `dst` needs `COPY_DST` and 16 bytes at `offset` (a multiple of 4); otherwise an
    /// [`Error::InvalidArgument`] and nothing is recorded.
    pub fn encode_copy_amp(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        dst: &wgpu::Buffer,
        offset: u64,
    ) -> Result<()> {
        check_copy_range(dst, offset, 16, wgpu::BufferUsages::COPY_DST)?;
        encoder.copy_buffer_to_buffer(&self.amp, 0, dst, offset, 16);
        Ok(())
    }

    /// Records a copy of the whole control buffer ([`CONTROL_WORDS`] words: loss scale,
    /// found_inf, gradient norm, clipping coefficient, metric, lr multiplier, growth tracker,
    /// the scale the step used) into `dst` at `offset`. `dst` needs `COPY_DST` and the
    /// room; otherwise an [`Error::InvalidArgument`] and nothing is recorded.
    pub fn encode_copy_control(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        dst: &wgpu::Buffer,
        offset: u64,
    ) -> Result<()> {
        let size = 4 * CONTROL_WORDS as u64;
        check_copy_range(dst, offset, size, wgpu::BufferUsages::COPY_DST)?;
        encoder.copy_buffer_to_buffer(&self.amp, 0, dst, offset, size);
        Ok(())
    }

    /// Reads back the whole state (for checkpoints and tests). It is a snapshot of one
    /// moment of the queue: the counters, the loss scale and every moment buffer are copied
    /// by one submit, so a step submitted by another thread lands either wholly before it or
    /// wholly after it.
    pub fn state(&self) -> Result<OptimizerState> {
        let words = read_buffers(&self.device, &self.queue, &self.state_ranges())?;
        Ok(self.state_from(words))
    }

    /// [`GpuAdamW::state`] without blocking (for the web): the future completes once the
    /// device has run the read-back, which needs the device to be polled (the browser does
    /// it; on native, a thread calling `device.poll`, or use [`GpuAdamW::state`]).
    pub async fn state_async(&self) -> Result<OptimizerState> {
        let words = Readback::start(&self.device, &self.queue, &self.state_ranges())?
            .finish()
            .await?;
        Ok(self.state_from(words))
    }

    /// A checkpoint as bytes (the file [`GpuAdamW::save_checkpoint`] writes), read without
    /// blocking: for the web, which has no file system. See [`GpuAdamW::state_async`].
    pub async fn checkpoint_bytes_async(&self) -> Result<Vec<u8>> {
        self.state_async().await?.to_bytes()
    }

    /// Loads a checkpoint from its bytes ([`GpuAdamW::checkpoint_bytes_async`], or a file's
    /// contents), as [`GpuAdamW::load_checkpoint`] does.
    pub fn load_checkpoint_bytes(&self, bytes: &[u8]) -> Result<()> {
        let state = OptimizerState::from_bytes(bytes, std::path::Path::new("<checkpoint bytes>"))?;
        self.load_state(&state)
    }

    /// [`GpuAdamW::read_lr`] without blocking; see [`GpuAdamW::state_async`].
    pub async fn read_lr_async(&self) -> Result<Vec<f32>> {
        let (at, size) = self.scalars_range();
        let words = read_buffer_async(&self.device, &self.queue, &self.meta, at, size).await?;
        Ok(scalar_word(&words, 0))
    }

    /// [`GpuAdamW::read_counters`] without blocking; see [`GpuAdamW::state_async`].
    pub async fn read_counters_async(&self) -> Result<Counters> {
        let size = 4 * u64::from(COUNTER_WORDS);
        let w = read_buffer_async(&self.device, &self.queue, &self.meta, 0, size).await?;
        Ok(counters_of(&w))
    }

    /// What [`GpuAdamW::state`] reads, in one submit: the counters, the control words, the
    /// schedule's state and every arena of every stream kept.
    fn state_ranges(&self) -> Vec<(&wgpu::Buffer, u64, u64)> {
        let g = &self.globals;
        let state_at = 4 * u64::from(g.sched_at + g.sched_state_at);
        let mut ranges = vec![
            (&self.meta, 0, 4 * u64::from(COUNTER_WORDS)),
            (&self.amp, 0, 4 * CONTROL_WORDS as u64),
            (&self.meta, state_at, self.schedule_end() - state_at),
        ];
        for (arenas, _) in self.streams().into_iter().flatten() {
            ranges.extend(arenas.iter().map(|b| (b, 0, b.size())));
        }
        ranges
    }

    /// The state from the words of [`GpuAdamW::state_ranges`].
    fn state_from(&self, words: Vec<Vec<u32>>) -> OptimizerState {
        let streams = self.streams();
        let mut words = words.into_iter();
        let counters = words.next().expect("one per range");
        let control = words.next().expect("one per range");
        let schedule_state = words.next().expect("one per range");
        // Each stream's arenas, in the order they were read.
        let read: Vec<Option<(Vec<Vec<u32>>, Dtype)>> = streams
            .iter()
            .map(|s| s.map(|(arenas, ty)| (words.by_ref().take(arenas.len()).collect(), ty)))
            .collect();
        let gather = |stream: usize, t: &TensorInfo| -> Option<Vec<f32>> {
            let (arenas, ty) = read[stream].as_ref()?;
            let mut out = Vec::with_capacity(t.len as usize);
            for p in &t.pieces {
                let words = &arenas[p.arena];
                let s = p.state_offset as usize;
                out.extend((s..s + p.len as usize).map(|i| read_elem(words, i, *ty)));
            }
            Some(out)
        };
        OptimizerState {
            config: self.config.clone(),
            groups: self.groups(),
            counters: counters_of(&counters),
            loss_scale: f32::from_bits(control[0]),
            schedule_state,
            metric: f32::from_bits(control[CONTROL_METRIC]),
            lr_scale: f32::from_bits(control[CONTROL_LR_SCALE]),
            growth_tracker: control[CONTROL_GROWTH_TRACKER],
            tensors: self
                .tensors
                .iter()
                .map(|t| TensorState {
                    group: t.group,
                    exp_avg: gather(STREAM_EXP_AVG, t).expect("always kept"),
                    exp_avg_sq: gather(STREAM_EXP_AVG_SQ, t).expect("always kept"),
                    max_exp_avg_sq: gather(STREAM_MAX_EXP_AVG_SQ, t),
                    master: gather(STREAM_MASTER, t),
                    ema: gather(STREAM_EMA, t),
                    // Mid-step only: the accumulator is meaningless at a step boundary.
                    grad_acc: gather(STREAM_GRAD_ACC, t).filter(|_| counters[COUNTER_MICRO] > 0),
                })
                .collect(),
            shard: self.shard.clone(),
        }
    }

    /// The optimizer's own streams, indexed by `STREAM_*`: their arenas and element type,
    /// `None` for the ones this configuration does not keep.
    fn streams(&self) -> [Option<(&[wgpu::Buffer], Dtype)>; 6] {
        let (a, c) = (&self.arenas, &self.config);
        let s = c.precision.state_dtype();
        [
            Some((&a.exp_avg[..], s)),
            Some((&a.exp_avg_sq[..], s)),
            c.amsgrad.then_some((&a.max_exp_avg_sq[..], s)),
            c.precision
                .master_weights
                .then_some((&a.master[..], Dtype::F32)),
            c.ema_decay.is_some().then_some((&a.ema[..], c.ema_dtype())),
            (c.accumulate > 1).then_some((&a.grad_acc[..], c.grad_acc_dtype())),
        ]
    }

    /// Restores a state read by [`GpuAdamW::state`] or from a checkpoint, the groups' lr and
    /// weight decay included (as PyTorch's `load_state_dict`). The state must match this
    /// optimizer's tensors; on a mismatch nothing is changed.
    pub fn load_state(&self, state: &OptimizerState) -> Result<()> {
        let shape: Vec<(usize, usize)> = self
            .tensors
            .iter()
            .map(|t| (t.group, t.len as usize))
            .collect();
        let g = &self.globals;
        let state_at = 4 * u64::from(g.sched_at + g.sched_state_at);
        let state_len = ((self.schedule_end() - state_at) / 4) as usize;
        if state.shard != self.shard {
            let why = match (&state.shard, &self.shard) {
                (Some(m), None) => format!(
                    "the checkpoint is rank {}'s of {} shards and this optimizer is not a shard \
                     (merge the shards: shard::merge_states)",
                    m.rank,
                    m.layout.ranks()
                ),
                (None, Some(_)) => {
                    "the checkpoint is not a shard's (split it: shard::split_state)".into()
                }
                _ => "the checkpoint is another shard's (rank, layout or tensors differ; \
                      reshard it: shard::reshard)"
                    .into(),
            };
            return Err(Error::CheckpointMismatch(why));
        }
        let mut groups = self.groups.write().expect("not poisoned");
        state.check_matches(&self.config, &groups, &shape, state_len)?;
        for (i, gc) in state.groups.iter().enumerate() {
            self.config.validate_group_at(i, gc)?;
        }
        for (stream, kept) in self.streams().iter().enumerate() {
            if let Some((arenas, ty)) = kept {
                self.write_arenas(arenas, *ty, |i| stream_values(&state.tensors[i], stream));
            }
        }
        let counters = [state.counters.sched, state.counters.adam];
        self.queue
            .write_buffer(&self.meta, 0, bytemuck::cast_slice(&counters));
        self.queue.write_buffer(
            &self.meta,
            4 * COUNTER_MICRO as u64,
            bytemuck::bytes_of(&state.counters.micro),
        );
        let table: Vec<u32> = state
            .groups
            .iter()
            .flat_map(|gc| {
                let (lr, wd) = self.config.resolve(gc);
                [(lr as f32).to_bits(), (wd as f32).to_bits(), 0, 0]
            })
            .collect();
        self.queue.write_buffer(
            &self.meta,
            4 * u64::from(g.groups_at),
            bytemuck::cast_slice(&table),
        );
        if !state.schedule_state.is_empty() {
            self.queue.write_buffer(
                &self.meta,
                state_at,
                bytemuck::cast_slice(&state.schedule_state),
            );
        }
        self.set_loss_scale(state.loss_scale);
        self.queue.write_buffer(
            &self.amp,
            4 * CONTROL_GROWTH_TRACKER as u64,
            bytemuck::bytes_of(&state.growth_tracker),
        );
        self.set_metric(state.metric);
        self.queue.write_buffer(
            &self.amp,
            4 * CONTROL_LR_SCALE as u64,
            bytemuck::bytes_of(&state.lr_scale),
        );
        *groups = state.groups.clone();
        self.queue.submit([]);
        Ok(())
    }

    /// Writes every tensor's values (`values(i)` for tensor `i`, `None`: left as they are)
    /// into one kind of arena, as whole arenas (16-bit values share words).
    fn write_arenas<'a>(
        &self,
        arenas: &[wgpu::Buffer],
        ty: Dtype,
        values: impl Fn(usize) -> Option<&'a [f32]>,
    ) {
        let mut images: Vec<Option<Vec<u32>>> = vec![None; arenas.len()];
        for (i, t) in self.tensors.iter().enumerate() {
            let Some(data) = values(i) else { continue };
            let mut done = 0usize;
            for p in &t.pieces {
                let image = images[p.arena]
                    .get_or_insert_with(|| vec![0; (arenas[p.arena].size() / 4) as usize]);
                for (j, &x) in data[done..done + p.len as usize].iter().enumerate() {
                    write_elem(image, p.state_offset as usize + j, x, ty);
                }
                done += p.len as usize;
            }
        }
        for (buf, image) in arenas.iter().zip(images) {
            if let Some(image) = image {
                self.queue
                    .write_buffer(buf, 0, bytemuck::cast_slice(&image));
            }
        }
    }

    /// Sets the f32 master weights of every tensor (registration order), for an optimizer
    /// with [`Precision::master_weights`] whose f32 weights are not the widened 16-bit
    /// parameters it took at creation (a model initialised or loaded in f32). The weight
    /// EMA, if any, starts from them too: call it before the first step.
    pub fn set_master_weights(&self, values: &[&[f32]]) -> Result<()> {
        if !self.config.precision.master_weights {
            return Err(Error::InvalidArgument(
                "this optimizer keeps no master weights".into(),
            ));
        }
        if values.len() != self.tensors.len() {
            return Err(Error::ShapeMismatch(format!(
                "{} tensors registered, got {} master tensors",
                self.tensors.len(),
                values.len()
            )));
        }
        for (i, (t, v)) in self.tensors.iter().zip(values).enumerate() {
            if v.len() as u64 != t.len {
                return Err(Error::ShapeMismatch(format!(
                    "tensor {i}: {} elements registered, got {}",
                    t.len,
                    v.len()
                )));
            }
        }
        self.write_weights(values, true, self.config.ema_decay.is_some())
    }

    /// Writes `values` (one slice per tensor, checked) as the master weights and/or the EMA.
    fn write_weights(&self, values: &[&[f32]], master: bool, ema: bool) -> Result<()> {
        if master {
            self.write_arenas(&self.arenas.master, Dtype::F32, |i| Some(values[i]));
        }
        if ema {
            let ty = self.config.ema_dtype();
            self.write_arenas(&self.arenas.ema, ty, |i| Some(values[i]));
        }
        self.queue.submit([]);
        Ok(())
    }

    /// Master weights and the EMA from the engine's parameters, widened (at creation), given
    /// the words of [`weight_ranges`].
    fn init_weights(&self, groups: &[ParamGroup], read: &[Vec<u32>]) -> Result<()> {
        let ty = self.config.precision.param;
        let tensors: Vec<&TensorBinding> = groups.iter().flat_map(|g| &g.tensors).collect();
        let values: Vec<Vec<f32>> = tensors
            .iter()
            .zip(read)
            .map(|(t, words)| {
                let first = ((t.param_offset % 4) / ty.size()) as usize;
                (first..first + t.len as usize)
                    .map(|i| read_elem(words, i, ty))
                    .collect()
            })
            .collect();
        let refs: Vec<&[f32]> = values.iter().map(Vec::as_slice).collect();
        if self.config.precision.master_weights {
            self.set_master_weights(&refs)
        } else {
            self.write_weights(&refs, false, true)
        }
    }

    /// Saves the state to a checkpoint file (atomically; see [`OptimizerState::save`]).
    pub fn save_checkpoint(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        self.state()?.save(path)
    }

    /// Loads a checkpoint saved by either backend into this optimizer.
    pub fn load_checkpoint(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        self.load_state(&OptimizerState::load(path)?)
    }

    #[doc(hidden)]
    /// Copies `size` bytes at `offset` of `buffer` back to the host and waits (see
    /// [`read_buffer`]).
    pub fn read_words(&self, buffer: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u32>> {
        read_buffer(&self.device, &self.queue, buffer, offset, size)
    }
}

/// Runs `f`, which records or submits work on `device`, inside validation and out-of-memory
/// error scopes, and with wgpu's panics (a handle of another `wgpu::Instance`) caught:
/// either becomes an [`Error::Device`] instead of reaching the uncaptured-error handler.
///
/// On the web (wasm32) a scope's result arrives only after control returns to the browser,
/// so `f` runs without scopes there and its errors reach the device's uncaptured-error
/// handler (`wgpu::Device::on_uncaptured_error`; the browser's console by default).
#[cfg(target_arch = "wasm32")]
pub(crate) fn checked<T>(_device: &wgpu::Device, f: impl FnOnce() -> T) -> Result<T> {
    Ok(f())
}

/// See the wasm32 version above.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn checked<T>(device: &wgpu::Device, f: impl FnOnce() -> T) -> Result<T> {
    // Natively the scopes' results are ready at once.
    let (out, caught) = pollster::block_on(in_error_scopes(device, || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
    }));
    let out = out.map_err(|payload| {
        let what = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("unknown");
        Error::Device(format!(
            "wgpu panicked ({what}): is every buffer from this device's wgpu::Instance?"
        ))
    })?;
    scoped(out, caught)
}

/// Runs `f` inside validation and out-of-memory error scopes and awaits what they caught
/// (see [`scoped`]).
async fn in_error_scopes<T>(
    device: &wgpu::Device,
    f: impl FnOnce() -> T,
) -> (T, Option<wgpu::Error>) {
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let out = f();
    let oom = oom.pop().await;
    (out, oom.or(validation.pop().await))
}

/// `out`, or what an error scope caught as an [`Error::Device`].
fn scoped<T>(out: T, caught: Option<wgpu::Error>) -> Result<T> {
    match caught {
        Some(e) => Err(Error::Device(e.to_string())),
        None => Ok(out),
    }
}

/// Every tensor's parameters as whole words, to read back in one submit (the starting master
/// weights and EMA).
fn weight_ranges<'a>(
    groups: &'a [ParamGroup],
    config: &AdamWConfig,
) -> Vec<(&'a wgpu::Buffer, u64, u64)> {
    let ty = config.precision.param;
    groups
        .iter()
        .flat_map(|g| &g.tensors)
        .map(|t| {
            let start = t.param_offset / 4 * 4;
            let end = (t.param_offset + ty.size() * t.len).div_ceil(4) * 4;
            (&t.param, start, end - start)
        })
        .collect()
}

/// Checks a `(buffer, offset, size)` range for a copy out of (`COPY_SRC`) or into
/// (`COPY_DST`) `buffer`: the usage, 4-byte alignment, in bounds.
fn check_copy_range(
    buffer: &wgpu::Buffer,
    offset: u64,
    size: u64,
    usage: wgpu::BufferUsages,
) -> Result<()> {
    let bad = |why: String| Err(Error::InvalidArgument(why));
    if !buffer.usage().contains(usage) {
        return bad(format!("the buffer lacks BufferUsages::{usage:?}"));
    }
    if !offset.is_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT)
        || !size.is_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT)
    {
        return bad(format!(
            "offset {offset} and size {size} must be multiples of {}",
            wgpu::COPY_BUFFER_ALIGNMENT
        ));
    }
    if offset
        .checked_add(size)
        .is_none_or(|end| end > buffer.size())
    {
        return bad(format!(
            "{size} bytes at offset {offset} run past the buffer's end ({} bytes)",
            buffer.size()
        ));
    }
    Ok(())
}

/// Copies `size` bytes (a multiple of 4) at `offset` (a multiple of 4) of `buffer` back to
/// the host and waits. `buffer` needs `BufferUsages::COPY_SRC`; a range that does not fit
/// is an [`Error::InvalidArgument`], a device error an [`Error::Device`].
pub fn read_buffer(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    buffer: &wgpu::Buffer,
    offset: u64,
    size: u64,
) -> Result<Vec<u32>> {
    Ok(read_buffers(device, queue, &[(buffer, offset, size)])?
        .pop()
        .expect("one per range"))
}

/// Reads several ranges with one submit, so that they are one snapshot of the queue, and
/// waits for them.
fn read_buffers(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    ranges: &[(&wgpu::Buffer, u64, u64)],
) -> Result<Vec<Vec<u32>>> {
    if cfg!(target_arch = "wasm32") {
        // The browser maps buffers between tasks: waiting here would wait forever.
        return Err(Error::Unsupported(
            "a blocking read-back on the web: use the async form (state_async, read_lr_async, ...)"
                .into(),
        ));
    }
    let readback = Readback::start(device, queue, ranges)?;
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| Error::Readback(e.to_string()))?;
    // The poll has resolved every mapping; another thread polling the same device may be the
    // one that runs a callback, so wait for each to arrive rather than assume it has.
    let mut done = readback.done.0.lock().expect("not poisoned");
    while done.remaining > 0 {
        done = readback.done.1.wait(done).expect("not poisoned");
    }
    drop(done);
    readback.collect()
}

/// Copies `size` bytes (a multiple of 4) at `offset` (a multiple of 4) of `buffer` back to
/// the host without blocking: the future completes once the device has run the copy, which
/// needs the device to be polled: the browser does it on the web; on native, a thread
/// calling `device.poll`, or [`read_buffer`], which waits. Errors as [`read_buffer`]'s.
pub async fn read_buffer_async(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    buffer: &wgpu::Buffer,
    offset: u64,
    size: u64,
) -> Result<Vec<u32>> {
    let mut words = Readback::start(device, queue, &[(buffer, offset, size)])?
        .finish()
        .await?;
    Ok(words.pop().expect("one per range"))
}

/// The progress of a [`Readback`]'s mappings, shared with their callbacks.
#[derive(Debug, Default)]
struct MapProgress {
    remaining: usize,
    error: Option<String>,
    waker: Option<std::task::Waker>,
}

/// Ranges copied into staging buffers in one submit, being mapped for reading.
struct Readback {
    staging: Vec<Option<wgpu::Buffer>>,
    done: std::sync::Arc<(std::sync::Mutex<MapProgress>, std::sync::Condvar)>,
}

impl Readback {
    /// Checks the ranges, copies them into new staging buffers in one submit and asks for
    /// each to be mapped.
    fn start(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        ranges: &[(&wgpu::Buffer, u64, u64)],
    ) -> Result<Self> {
        for &(buffer, offset, size) in ranges {
            check_copy_range(buffer, offset, size, wgpu::BufferUsages::COPY_SRC)?;
        }
        let staging: Vec<Option<wgpu::Buffer>> = checked(device, || {
            let mut encoder = device.create_command_encoder(&Default::default());
            let staging = ranges
                .iter()
                .map(|&(buffer, offset, size)| {
                    (size > 0).then(|| {
                        let staging = device.create_buffer(&wgpu::BufferDescriptor {
                            label: Some("wgpu-adamw readback"),
                            size,
                            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                            mapped_at_creation: false,
                        });
                        encoder.copy_buffer_to_buffer(buffer, offset, &staging, 0, size);
                        staging
                    })
                })
                .collect();
            queue.submit([encoder.finish()]);
            staging
        })?;
        let done = std::sync::Arc::new((
            std::sync::Mutex::new(MapProgress {
                remaining: staging.iter().flatten().count(),
                ..Default::default()
            }),
            std::sync::Condvar::new(),
        ));
        for s in staging.iter().flatten() {
            let done = done.clone();
            s.map_async(wgpu::MapMode::Read, .., move |r| {
                let mut p = done.0.lock().expect("not poisoned");
                if let Err(e) = r {
                    p.error.get_or_insert(e.to_string());
                }
                p.remaining -= 1;
                if p.remaining == 0 {
                    if let Some(w) = p.waker.take() {
                        w.wake();
                    }
                    done.1.notify_all();
                }
            });
        }
        Ok(Self { staging, done })
    }

    /// Waits (without blocking) for every mapping, then reads the words.
    async fn finish(self) -> Result<Vec<Vec<u32>>> {
        std::future::poll_fn(|cx| {
            let mut p = self.done.0.lock().expect("not poisoned");
            if p.remaining == 0 {
                std::task::Poll::Ready(())
            } else {
                p.waker = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await;
        self.collect()
    }

    /// The words of every range, once all are mapped.
    fn collect(self) -> Result<Vec<Vec<u32>>> {
        if let Some(e) = self.done.0.lock().expect("not poisoned").error.take() {
            return Err(Error::Readback(e));
        }
        self.staging
            .iter()
            .map(|s| {
                let Some(s) = s else { return Ok(Vec::new()) };
                let data = s
                    .get_mapped_range(..)
                    .map_err(|e| Error::Readback(e.to_string()))?;
                let out = bytemuck::pod_collect_to_vec(&data);
                drop(data);
                s.unmap();
                Ok(out)
            })
            .collect()
    }
}

fn binding(buffer: &wgpu::Buffer, offset: u64, size: u64) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer,
        offset,
        size: wgpu::BufferSize::new(size),
    })
}

fn make_bind_group(
    device: &wgpu::Device,
    label: &str,
    layout: &wgpu::BindGroupLayout,
    entries: Vec<(u32, wgpu::BindingResource<'_>)>,
) -> wgpu::BindGroup {
    let entries: Vec<wgpu::BindGroupEntry<'_>> = entries
        .into_iter()
        .map(|(binding, resource)| wgpu::BindGroupEntry { binding, resource })
        .collect();
    device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(label),
        layout,
        entries: &entries,
    })
}

/// The counters in the first words of `meta`.
fn counters_of(words: &[u32]) -> Counters {
    Counters {
        sched: words[COUNTER_SCHED],
        adam: words[COUNTER_ADAM],
        micro: words[COUNTER_MICRO],
    }
}

/// Word `word` of each group's per-step scalars, as f32.
fn scalar_word(words: &[u32], word: usize) -> Vec<f32> {
    words
        .chunks(SCALAR_WORDS as usize)
        .map(|s| f32::from_bits(s[word]))
        .collect()
}

/// Indices of [`GpuAdamW::streams`].
const STREAM_EXP_AVG: usize = 0;
const STREAM_EXP_AVG_SQ: usize = 1;
const STREAM_MAX_EXP_AVG_SQ: usize = 2;
const STREAM_MASTER: usize = 3;
const STREAM_EMA: usize = 4;
const STREAM_GRAD_ACC: usize = 5;

/// A tensor state's values of stream `stream` (`STREAM_*`).
fn stream_values(t: &TensorState, stream: usize) -> Option<&[f32]> {
    match stream {
        STREAM_EXP_AVG => Some(&t.exp_avg),
        STREAM_EXP_AVG_SQ => Some(&t.exp_avg_sq),
        STREAM_MAX_EXP_AVG_SQ => t.max_exp_avg_sq.as_deref(),
        STREAM_MASTER => t.master.as_deref(),
        STREAM_EMA => t.ema.as_deref(),
        _ => t.grad_acc.as_deref(),
    }
}

/// Element `i` of a stream of 32-bit words holding `ty` elements, widened to f32.
fn read_elem(words: &[u32], i: usize, ty: Dtype) -> f32 {
    match ty {
        Dtype::F32 => f32::from_bits(words[i]),
        _ => ty.widen((words[i / 2] >> (16 * (i % 2))) as u16),
    }
}

/// Stores `x` (rounded to `ty`) as element `i` of a stream of 32-bit words.
fn write_elem(words: &mut [u32], i: usize, x: f32, ty: Dtype) {
    match ty {
        Dtype::F32 => words[i] = x.to_bits(),
        _ => {
            let shift = 16 * (i % 2);
            let w = &mut words[i / 2];
            *w = (*w & !(0xffff << shift)) | (u32::from(ty.narrow(x)) << shift);
        }
    }
}

/// Checks that `len` elements of type `ty` at byte `off` of `buf` can be bound: the offset
/// aligned to the element, `STORAGE` usage, whole 32-bit words, in bounds.
fn check_range(
    what: &str,
    buf: &wgpu::Buffer,
    off: u64,
    len: u64,
    ty: Dtype,
) -> std::result::Result<(), String> {
    let size = ty.size();
    if !off.is_multiple_of(size) {
        return Err(format!(
            "{what} offset {off} is not a multiple of {size} ({} elements)",
            ty.name()
        ));
    }
    if !buf.usage().contains(wgpu::BufferUsages::STORAGE) {
        return Err(format!("{what} buffer lacks BufferUsages::STORAGE"));
    }
    if ty.is_16bit() && len > 0 && !buf.size().is_multiple_of(4) {
        return Err(format!(
            "the {what} buffer holds {} elements: its size ({} bytes) must be a multiple of 4 (storage is bound in 32-bit words)",
            ty.name(),
            buf.size()
        ));
    }
    let end = len.checked_mul(size).and_then(|b| b.checked_add(off));
    if end.is_none_or(|e| e > buf.size()) {
        return Err(format!(
            "{what} range of {len} elements at byte {off} runs past the buffer's end ({} bytes)",
            buf.size()
        ));
    }
    Ok(())
}

fn validate_bindings(groups: &[ParamGroup], precision: &Precision) -> Result<()> {
    #[allow(clippy::mutable_key_type)] // hashed by identity
    let mut ranges: HashMap<wgpu::Buffer, Vec<(u64, u64, usize, bool)>> = HashMap::new();
    let mut index = 0usize;
    for g in groups {
        for t in &g.tensors {
            let err = |reason: String| Error::InvalidTensor {
                tensor: index,
                reason,
            };
            for (what, buf, off, ty) in [
                ("param", &t.param, t.param_offset, precision.param),
                ("grad", &t.grad, t.grad_offset, precision.grad),
            ] {
                check_range(what, buf, off, t.len, ty).map_err(err)?;
            }
            if t.len > 0 {
                for (buf, off, is_param, ty) in [
                    (&t.param, t.param_offset, true, precision.param),
                    (&t.grad, t.grad_offset, false, precision.grad),
                ] {
                    ranges.entry(buf.clone()).or_default().push((
                        off,
                        off + ty.size() * t.len,
                        index,
                        is_param,
                    ));
                }
            }
            index += 1;
        }
    }
    // Parameters are written: they may overlap nothing else registered (gradients may be
    // shared, they are only read).
    for list in ranges.values_mut() {
        list.sort_unstable_by_key(|r| (r.0, r.1));
        let mut widest: Option<(u64, usize, bool)> = None; // (end, tensor, is_param)
        for &(start, end, tensor, is_param) in list.iter() {
            if let Some((w_end, w_tensor, w_param)) = widest {
                if start < w_end && (is_param || w_param) {
                    let what = |p: bool| if p { "parameters" } else { "gradients" };
                    return Err(Error::InvalidTensor {
                        tensor: tensor.max(w_tensor),
                        reason: format!(
                            "the {} of tensor {tensor} overlap the {} of tensor {w_tensor}",
                            what(is_param),
                            what(w_param)
                        ),
                    });
                }
            }
            if widest.is_none_or(|w| end > w.0) {
                widest = Some((end, tensor, is_param));
            }
        }
    }
    Ok(())
}

impl GpuAdamW {
    /// Records a copy of the last step's per-group scalars into `dst` at `offset`: 32 bytes
    /// per group, `[lr, 1 - lr*wd, lr / bc1, sqrt(bc2), 1 - beta1, -beta1, beta1, 0]` as f32. Lets a loop log the lr of every
    /// step without waiting on the device. `dst` needs `COPY_DST` and room at `offset` (a
    /// multiple of 4); otherwise an [`Error::InvalidArgument`] and nothing is recorded.
    pub fn encode_copy_step_scalars(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        dst: &wgpu::Buffer,
        offset: u64,
    ) -> Result<()> {
        let size = 4 * u64::from(SCALAR_WORDS) * self.n_groups() as u64;
        check_copy_range(dst, offset, size, wgpu::BufferUsages::COPY_DST)?;
        if size > 0 {
            encoder.copy_buffer_to_buffer(
                &self.meta,
                u64::from(self.globals.scalars_at) * 4,
                dst,
                offset,
                size,
            );
        }
        Ok(())
    }
}

/// The tables of the current gradients, for re-pointing to other places in the same
/// buffers without a new plan.
#[derive(Debug)]
struct GradPatch {
    /// Each tensor's gradient buffer.
    buffers: Vec<wgpu::Buffer>,
    /// The parameters in each tensor's gradient buffer, if it holds any.
    param_ranges: Vec<Option<ParamRanges>>,
    /// `(index in words, tensor, elements after the tensor's first gradient)` of every word
    /// that holds a gradient's place.
    fields: Vec<(usize, usize, u32)>,
    /// The table words from the tensor lists on, as last uploaded.
    words: Vec<u32>,
}

/// Where each dispatch's `DispatchInfo` sits in the uniform buffer (after the globals).
#[derive(Clone, Copy, Debug)]
struct UniformLayout {
    first_info: u64,
    stride: u64,
}

impl UniformLayout {
    fn info_at(&self, k: usize) -> u64 {
        self.first_info + k as u64 * self.stride
    }
}

/// A dispatch's bind groups are a function of these: its param and grad windows, its state
/// arena and its place in the dispatch list (its `DispatchInfo`).
type BindKey = (wgpu::Buffer, u64, wgpu::Buffer, u64, usize, usize);

/// The bind groups of one dispatch: `update` (or `update_mixed`), `reduce`, `accumulate`.
type DispatchBindGroups = (wgpu::BindGroup, wgpu::BindGroup, Option<wgpu::BindGroup>);

/// Bind groups kept for re-pointed gradients, at most (an engine that reuses its gradient
/// buffers from step to step finds them all here; one that does not starts over).
const BIND_GROUP_CACHE: usize = 4096;

/// Each param buffer's registered ranges, sorted: `(start byte, end byte, tensor)`.
#[allow(clippy::mutable_key_type)] // hashed by identity
fn param_ranges(groups: &[ParamGroup], ty: Dtype) -> HashMap<wgpu::Buffer, ParamRanges> {
    let mut ranges: HashMap<wgpu::Buffer, Vec<(u64, u64, usize)>> = HashMap::new();
    for (i, t) in groups.iter().flat_map(|g| &g.tensors).enumerate() {
        if t.len > 0 {
            let r = (t.param_offset, t.param_offset + ty.size() * t.len, i);
            ranges.entry(t.param.clone()).or_default().push(r);
        }
    }
    ranges
        .into_iter()
        .map(|(buffer, mut list)| {
            list.sort_unstable();
            (buffer, std::sync::Arc::new(list))
        })
        .collect()
}

/// The parameters' byte ranges in one buffer, sorted: `(start, end, tensor)`.
type ParamRanges = std::sync::Arc<Vec<(u64, u64, usize)>>;

/// The distinct engine buffers (by index; wgpu hashes buffers by identity) and the plan's
/// view of each tensor, from `(group, param, param offset, grad, grad offset, len)`.
fn plan_tensors<'a>(
    tensors: impl Iterator<Item = (usize, &'a wgpu::Buffer, u64, &'a wgpu::Buffer, u64, u64)>,
) -> (Vec<wgpu::Buffer>, Vec<PlanTensor>) {
    let mut buffers: Vec<wgpu::Buffer> = Vec::new();
    #[allow(clippy::mutable_key_type)]
    let mut buffer_index: HashMap<&wgpu::Buffer, usize> = HashMap::new();
    let mut index_of = |b: &'a wgpu::Buffer| {
        *buffer_index.entry(b).or_insert_with(|| {
            buffers.push(b.clone());
            buffers.len() - 1
        })
    };
    let planned = tensors
        .map(|(group, param, p_off, grad, g_off, len)| PlanTensor {
            group,
            param: (index_of(param), param.size(), p_off),
            grad: (index_of(grad), grad.size(), g_off),
            len,
        })
        .collect();
    (buffers, planned)
}

impl GpuAdamW {
    /// Makes `plan` (of this optimizer's parameters and state) the one its steps follow:
    /// its dispatches, and its tables in `meta` and the uniforms, uploaded with `encoder`
    /// (ordered before the steps recorded after it) or, at creation, the queue. Nothing
    /// changes on an error.
    fn apply_plan(
        &mut self,
        plan: &GpuPlan,
        buffers: &[wgpu::Buffer],
        grad_buffers: &[wgpu::Buffer],
        encoder: Option<&mut wgpu::CommandEncoder>,
    ) -> Result<()> {
        let lay = self.tables;
        if plan.total_chunks() > lay.chunk_capacity || plan.keys.len() > lay.key_capacity {
            return Err(Error::Unsupported(format!(
                "the plan of these gradients needs {} chunks and {} dispatches; room was made for {} and {}",
                plan.total_chunks(),
                plan.keys.len(),
                lay.chunk_capacity,
                lay.key_capacity
            )));
        }
        let max_dim = self
            .device
            .limits()
            .max_compute_workgroups_per_dimension
            .max(1);
        let grid = |n: u32| -> Result<Option<(u32, u32)>> {
            if n == 0 {
                return Ok(None);
            }
            let x = n.min(max_dim);
            if n.div_ceil(x) > max_dim {
                return Err(Error::DeviceLimit(format!(
                    "{n} chunks exceed the dispatch grid"
                )));
            }
            Ok(Some((x, n.div_ceil(x))))
        };
        let mut globals = self.globals;
        globals.n_chunks = plan.total_chunks() as u32;
        let mut uniform = vec![0u8; self.uniforms.info_at(plan.keys.len()) as usize];
        uniform[..std::mem::size_of::<Globals>()].copy_from_slice(bytemuck::bytes_of(&globals));
        #[allow(clippy::mutable_key_type)] // hashed by identity
        let mut cache = std::mem::take(&mut self.bind_groups);
        if cache.len() + plan.keys.len() > BIND_GROUP_CACHE {
            cache.clear();
        }
        let mut dispatches = Vec::with_capacity(plan.keys.len());
        let (mut first_chunk, mut first_tensor) = (0u32, 0u32);
        let built = (|| -> Result<()> {
            for (k, &(p_buf, p_win, g_buf, g_win, arena)) in plan.keys.iter().enumerate() {
                let n_chunks = plan.chunk_lists[k].len() as u32;
                let n_runs = plan.runs_of(k) as u32;
                let (grid_x, grid_y) = grid(n_chunks)?.unwrap_or((1, 1));
                let run_grid = grid(n_runs)?;
                let packed_grid = grid(n_chunks - n_runs)?;
                let n_tensors = plan.tensor_lists[k].len() as u32;
                let info = DispatchInfo {
                    first_chunk,
                    n_chunks,
                    grid_x,
                    first_tensor,
                    n_tensors,
                    n_runs,
                    packed_grid_x: packed_grid.map_or(1, |g| g.0),
                    views: if self
                        .vec4_windows(&buffers[p_buf], p_win, &buffers[g_buf], g_win)
                        .is_some()
                    {
                        VIEWS_VEC4
                    } else {
                        VIEWS_F32
                    },
                };
                let at = self.uniforms.info_at(k) as usize;
                uniform[at..at + std::mem::size_of::<DispatchInfo>()]
                    .copy_from_slice(bytemuck::bytes_of(&info));
                first_chunk += n_chunks;
                first_tensor += n_tensors;
                let key: BindKey = (
                    buffers[p_buf].clone(),
                    p_win,
                    buffers[g_buf].clone(),
                    g_win,
                    arena,
                    k,
                );
                let (bind_group, reduce_bind_group, accumulate_bind_group) = match cache.get(&key) {
                    Some(b) => b.clone(),
                    None => {
                        let b = checked(&self.device, || {
                            self.dispatch_bind_groups(&key.0, p_win, &key.2, g_win, arena, k)
                        })?;
                        cache.insert(key, b.clone());
                        b
                    }
                };
                dispatches.push(Dispatch {
                    bind_group,
                    reduce_bind_group,
                    accumulate_bind_group,
                    grid: (grid_x, grid_y),
                    run_grid,
                    packed_grid,
                    tensor_groups: n_tensors.div_ceil(8),
                });
            }
            Ok(())
        })();
        self.bind_groups = cache;
        built?;

        // The tables, from `lay.tensors_at` to the end of the element maps in use.
        let tables = plan.meta_tables(&lay);
        let mut words = vec![0u32; (lay.maps_at - lay.tensors_at) as usize + tables.maps.len()];
        let mut put = |at: u32, src: &[u32]| {
            let at = (at - lay.tensors_at) as usize;
            words[at..at + src.len()].copy_from_slice(src);
        };
        let lists: Vec<u32> = plan
            .tensor_lists
            .iter()
            .flatten()
            .flatten()
            .copied()
            .collect();
        put(lay.tensors_at, &lists);
        if let Some(seed) = self.config.stochastic_rounding {
            // The seed, then each run chunk's first element's index in registration order
            // (taken mod 2^32, the generator's key).
            let mut first_index = Vec::with_capacity(plan.tensors.len());
            let mut total = 0u64;
            for t in &plan.tensors {
                first_index.push(total);
                total += t.len;
            }
            let sr: Vec<u32> = [seed as u32, (seed >> 32) as u32]
                .into_iter()
                .chain(
                    plan.run_origins
                        .iter()
                        .flatten()
                        .map(|&(t, off)| (first_index[t] + off) as u32),
                )
                .collect();
            put(lay.sr_at, &sr);
        }
        put(lay.segments_at, &tables.segments);
        put(lay.chunks_at, &tables.chunks);
        put(lay.maps_at, &tables.maps);
        let uniform_changed = uniform != self.uniform_bytes;
        self.upload_tables(0, &words, uniform_changed.then_some(&uniform[..]), encoder);
        self.uniform_bytes = uniform;
        self.globals = globals;
        self.dispatches = dispatches;
        // Where every gradient buffer is bound whole, a later re-pointing to the same
        // buffers only rewrites the gradients' places in these words.
        let whole = grad_buffers
            .iter()
            .all(|b| b.size() <= self.plan_limits.max_binding);
        self.grad_patch = whole.then(|| GradPatch {
            buffers: grad_buffers.to_vec(),
            param_ranges: grad_buffers
                .iter()
                .map(|b| self.param_ranges.get(b).cloned())
                .collect(),
            fields: tables
                .grad_fields
                .iter()
                .map(|&(word, t, rel)| ((word - lay.tensors_at) as usize, t as usize, rel))
                .collect(),
            words,
        });
        Ok(())
    }

    /// Uploads the tables `words` (from the tensor lists on) and, if given, the uniform block:
    /// recorded into `encoder` (in command order, before the steps recorded after it) or,
    /// without one, written by the queue.
    fn upload_tables(
        &mut self,
        first: usize,
        words: &[u32],
        uniform: Option<&[u8]>,
        encoder: Option<&mut wgpu::CommandEncoder>,
    ) {
        let meta_at = 4 * (u64::from(self.tables.tensors_at) + first as u64);
        let uploads = [
            Some((&self.meta, meta_at, bytemuck::cast_slice::<u32, u8>(words))),
            uniform.map(|u| (&self.uniform, 0, u)),
        ];
        match encoder {
            None => {
                for (dst, at, bytes) in uploads.into_iter().flatten() {
                    self.queue.write_buffer(dst, at, bytes);
                }
            }
            Some(encoder) => {
                for (dst, at, bytes) in uploads.into_iter().flatten() {
                    if let Some(size) = wgpu::BufferSize::new(bytes.len() as u64) {
                        self.belt
                            .write_buffer(encoder, dst, at, size)
                            .copy_from_slice(bytes);
                    }
                }
                // The belt's buffers return to it once `encoder` has been submitted and run.
                self.belt.finish_and_recall_on_submit(encoder);
            }
        }
    }

    /// The sizes of the vec4 views of a dispatch's param and grad windows: each window rounded
    /// up to whole 16-byte units. `None` (the dispatch binds the f32 views) where either
    /// would pass its buffer's end or the binding limit.
    fn vec4_windows(
        &self,
        param: &wgpu::Buffer,
        p_win: u64,
        grad: &wgpu::Buffer,
        g_win: u64,
    ) -> Option<(u64, u64)> {
        let (max_binding, stride) = (self.plan_limits.max_binding, self.plan_limits.stride);
        let whole = |buffer: &wgpu::Buffer, win: u64| {
            let (_, size) = window_of(win, buffer.size(), max_binding, stride);
            let size = size.div_ceil(16) * 16;
            (win + size <= buffer.size() && size <= max_binding).then_some(size)
        };
        Some((whole(param, p_win)?, whole(grad, g_win)?))
    }

    /// The bind groups of dispatch `k` over the given param and grad windows and state arena.
    fn dispatch_bind_groups(
        &self,
        param: &wgpu::Buffer,
        p_win: u64,
        grad: &wgpu::Buffer,
        g_win: u64,
        arena: usize,
        k: usize,
    ) -> DispatchBindGroups {
        let (device, kernel, arenas, config) =
            (&self.device, &self.kernel, &self.arenas, &self.config);
        let prec = config.precision;
        let globals_size = std::mem::size_of::<Globals>() as u64;
        let info_size = std::mem::size_of::<DispatchInfo>() as u64;
        let (uniform, meta) = (&self.uniform, &self.meta);
        let (max_binding, stride) = (self.plan_limits.max_binding, self.plan_limits.stride);
        let (_, p_size) = window_of(p_win, param.size(), max_binding, stride);
        let (_, g_size) = window_of(g_win, grad.size(), max_binding, stride);
        let vmax = &arenas.max_exp_avg_sq[if config.amsgrad { arena } else { 0 }];
        let info_at = self.uniforms.info_at(k);
        let grad_window = || binding(grad, g_win, g_size / 4 * 4);
        // Globals, this dispatch's chunk range, meta: bound by each of its pipelines.
        let shared = || {
            vec![
                (0, binding(uniform, 0, globals_size)),
                (1, binding(uniform, info_at, info_size)),
                (2, meta.as_entire_binding()),
            ]
        };
        // With the gradients' window: `update` and `reduce`.
        let head = || {
            let mut entries = shared();
            entries.push((4, grad_window()));
            entries
        };
        let bind_group = if self.kernel.update_mixed.is_some() {
            let master = &arenas.master[if prec.master_weights { arena } else { 0 }];
            let ema = &arenas.ema[if config.ema_decay.is_some() { arena } else { 0 }];
            let mut entries = shared();
            entries.extend([
                (16, binding(param, p_win, p_size / 4 * 4)),
                (
                    17,
                    match arenas.grad_acc.get(arena) {
                        Some(acc) => acc.as_entire_binding(),
                        None => grad_window(),
                    },
                ),
                (18, arenas.exp_avg[arena].as_entire_binding()),
                (19, arenas.exp_avg_sq[arena].as_entire_binding()),
                (20, vmax.as_entire_binding()),
                (21, master.as_entire_binding()),
                (22, ema.as_entire_binding()),
            ]);
            make_bind_group(
                device,
                "wgpu-adamw update_mixed",
                &kernel.update_mixed_layout,
                entries,
            )
        } else {
            let mut update_entries = shared();
            update_entries.extend([
                (5, arenas.exp_avg[arena].as_entire_binding()),
                (6, arenas.exp_avg_sq[arena].as_entire_binding()),
                (7, vmax.as_entire_binding()),
            ]);
            let [a, b] = &self.stand_ins;
            // One view of each window (DispatchInfo::views), the other filled by a stand-in.
            update_entries.extend(match self.vec4_windows(param, p_win, grad, g_win) {
                Some((p4, g4)) => [
                    (3, a.as_entire_binding()),
                    (4, b.as_entire_binding()),
                    (14, binding(param, p_win, p4)),
                    (15, binding(grad, g_win, g4)),
                ],
                None => [
                    (3, binding(param, p_win, p_size / 4 * 4)),
                    (4, grad_window()),
                    (14, a.as_entire_binding()),
                    (15, b.as_entire_binding()),
                ],
            });
            make_bind_group(
                device,
                "wgpu-adamw update",
                &kernel.update_layout,
                update_entries,
            )
        };
        let mut reduce_entries = head();
        if let Some(acc) = arenas.grad_acc.get(arena) {
            // The norm and the non-finite check see the accumulated gradients.
            reduce_entries.retain(|(b, _)| *b != 4);
            reduce_entries.push((4, acc.as_entire_binding()));
        }
        reduce_entries.extend([
            (10, self.amp.as_entire_binding()),
            (12, self.partials.as_entire_binding()),
        ]);
        let reduce_bind_group = make_bind_group(
            device,
            "wgpu-adamw reduce",
            &kernel.reduce_layout,
            reduce_entries,
        );
        let accumulate_bind_group = arenas.grad_acc.get(arena).map(|acc| {
            let mut entries = shared();
            entries.extend([(17, grad_window()), (23, acc.as_entire_binding())]);
            make_bind_group(
                device,
                "wgpu-adamw accumulate",
                &kernel.accumulate_layout,
                entries,
            )
        });
        (bind_group, reduce_bind_group, accumulate_bind_group)
    }
}
