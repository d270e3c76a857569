//! The fused kernel `shaders/*.wgsl`: its uniform struct, its constants and the pipelines
//! that run it. [`crate::twin`] is its CPU twin.

use crate::config::{AdamWConfig, GradNormOrder};
use bytemuck::{Pod, Zeroable};

/// The kernel's files, by concept, after the f16 conversions' file `$f16`.
macro_rules! kernel_source {
    ($prefix:expr, $f16:expr) => {
        concat!(
            $prefix,
            include_str!("../shaders/layout.wgsl"),
            include_str!("../shaders/numerics.wgsl"),
            include_str!($f16),
            include_str!("../shaders/schedule.wgsl"),
            include_str!("../shaders/grad_norm.wgsl"),
            include_str!("../shaders/prologue.wgsl"),
            include_str!("../shaders/update.wgsl"),
            include_str!("../shaders/update_mixed.wgsl"),
            include_str!("../shaders/accumulate.wgsl"),
            include_str!("../shaders/probes.wgsl"),
        )
    };
}

/// The WGSL source of the fused AdamW + schedule kernel: its files, by concept, concatenated
/// (the twin in `src/twin/` follows the same split). Runs on every adapter.
pub const SHADER_SOURCE: &str = kernel_source!("", "../shaders/f16_packed.wgsl");

/// [`SHADER_SOURCE`] with f16 converted by the device's own conversion instructions
/// (`pack2x16float`/`unpack2x16float`), whose rounding WGSL leaves to the device: used only
/// where a probe finds it exact (see [`crate::GpuOptions::f16`]).
pub const SHADER_SOURCE_NATIVE_F16: &str = kernel_source!("", "../shaders/f16_native.wgsl");

/// Default elements per invocation of `update` and `reduce` (the shader's `ELEMS_PER_THREAD`
/// override): one workgroup handles a chunk of `WORKGROUP * ELEMS_PER_THREAD` elements.
pub const ELEMS_PER_THREAD: u32 = 8;
/// Default chunk: elements one workgroup of `update` handles.
pub const CHUNK: u32 = WORKGROUP * ELEMS_PER_THREAD;
/// Invocations per workgroup of `update`.
pub const WORKGROUP: u32 = 256;
/// `Globals::flags` bit: AMSGrad.
pub const FLAG_AMSGRAD: u32 = 1;
/// `Globals::flags` bit: maximize.
pub const FLAG_MAXIMIZE: u32 = 2;
/// `Globals::flags` bit: AMP loss scaling (unscale, skip the step on non-finite gradients).
pub const FLAG_LOSS_SCALE: u32 = 4;
/// `Globals::flags` bit: clip the global gradient norm.
pub const FLAG_CLIP: u32 = 8;
/// `Globals::flags` bit: sum the gradient norm in PyTorch's CPU order.
pub const FLAG_TORCH_NORM: u32 = 16;
/// `Globals::flags` bit: the schedule sets beta1 (onecycle, cyclic with `cycle_momentum`).
pub const FLAG_CYCLE_MOMENTUM: u32 = 32;
/// `Globals::flags` bit: the schedule is ReduceLROnPlateau.
pub const FLAG_PLATEAU: u32 = 64;
/// `Globals::flags` bit: PyTorch's GradScaler updates the loss scale on the device after
/// every step (with [`FLAG_LOSS_SCALE`]).
pub const FLAG_GRAD_SCALER: u32 = 128;
/// `Globals::flags` bit: gradients accumulate over `Globals::accumulate` calls.
pub const FLAG_ACCUMULATE: u32 = 256;
/// `Globals::flags` bit: the optimizer is one shard of several ([`crate::shard`]): each rank
/// folds its own gradient-norm partials, the engine gathers them, and the prologue folds the
/// gathered ones in rank order.
pub const FLAG_SHARDED: u32 = 512;
/// Words per group of the per-step scalars in `meta`: lr, `1 - lr*wd`, `lr / bc1`,
/// `sqrt(bc2)`, `1 - beta1`, `(1 - beta1) - 1`, beta1, unused.
pub const SCALAR_WORDS: u32 = 8;
/// Control-buffer word: the loss scale (set by the host or the engine).
pub const CONTROL_SCALE: usize = 0;
/// Control-buffer word: the metric of the last epoch (ReduceLROnPlateau).
pub const CONTROL_METRIC: usize = 4;
/// Control-buffer word: the lr multiplier (1 unless the engine sets it).
pub const CONTROL_LR_SCALE: usize = 5;
/// Control-buffer word: the GradScaler's growth tracker (u32).
pub const CONTROL_GROWTH_TRACKER: usize = 6;
/// Control-buffer word: the loss scale the last step used (with a GradScaler the scale word
/// already holds the next step's).
pub const CONTROL_SCALE_USED: usize = 7;
/// Words of the control buffer.
pub const CONTROL_WORDS: usize = 8;
/// `meta` word: scheduler steps taken.
pub const COUNTER_SCHED: usize = 0;
/// `meta` word: Adam steps taken.
pub const COUNTER_ADAM: usize = 1;
/// `meta` word: the last step was skipped (1: non-finite gradients under loss scaling) or
/// only accumulated ([`STEP_MICRO`]).
pub const STEP_SKIPPED: usize = 2;
/// `meta[STEP_SKIPPED]` of a call that only accumulated a micro-batch.
pub const STEP_MICRO: u32 = 2;
/// `meta` word: micro-batches accumulated since the last optimizer step.
pub const COUNTER_MICRO: usize = 5;
/// Words at the start of the `meta` buffer that hold the step counters.
pub const COUNTER_WORDS: u32 = 8;
/// Stand-in for `ln(0)` when a beta is 0 (keeps infinities out of the shader).
pub const LN_ZERO: f32 = -1.0e4;

/// The kernel's uniform block (`struct Globals` in the WGSL): everything that does not change
/// from step to step, prepared on the host in f64 and rounded once to f32.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct Globals {
    /// Word offset of the schedule region in `meta` (`shaders/schedule.wgsl`).
    pub sched_at: u32,
    /// Optimizer steps per scheduler epoch.
    pub steps_per_epoch: u32,
    /// Words of one group's schedule program.
    pub sched_stride: u32,
    /// Offset of the schedule's state (ReduceLROnPlateau) in the schedule region.
    pub sched_state_at: u32,
    /// GradScaler: successful steps between growths ([`FLAG_GRAD_SCALER`]).
    pub growth_interval: u32,
    /// The weight EMA's `1 - decay`, computed in f64 and rounded to f32.
    pub ema_weight: f32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Number of param groups.
    pub n_groups: u32,
    /// GradScaler: the scale's growth factor, rounded to f32.
    pub growth_factor: f32,
    /// GradScaler: the scale's backoff factor, rounded to f32.
    pub backoff_factor: f32,
    /// eps.
    pub eps: f32,
    /// beta1 rounded to f32.
    pub beta1: f32,
    /// beta2 rounded to f32 (PyTorch multiplies the f32 moment by f32(beta2) too).
    pub beta2: f32,
    /// `1 - beta1` computed in f64.
    pub one_minus_beta1: f32,
    /// `1 - beta2` computed in f64 (in f32 it is 1.3e-5 off for beta2 = 0.999).
    pub one_minus_beta2: f32,
    /// `f32(1 - beta1) - 1` in f32: `torch.lerp`'s coefficient for weights >= 0.5.
    pub lerp_big_coeff: f32,
    /// `ln(beta1)` computed in f64.
    pub ln_beta1: f32,
    /// `ln(beta2)` computed in f64.
    pub ln_beta2: f32,
    /// Word offset of the group table in `meta`.
    pub groups_at: u32,
    /// Word offset of the per-step scalars in `meta`.
    pub scalars_at: u32,
    /// Word offset of the chunk table in `meta`.
    pub chunks_at: u32,
    /// Always 0: the kernel xors intermediates with it so no compiler can simplify the
    /// error-free transformations of its emulated fma.
    pub zero: u32,
    /// Number of chunks of all dispatches (entries of the gradient-norm partials).
    pub n_chunks: u32,
    /// Clipping threshold when [`FLAG_CLIP`] is set.
    pub max_grad_norm: f32,
    /// Number of tensors.
    pub n_tensors: u32,
    /// Word offset of the tensor table in `meta` ([`FLAG_TORCH_NORM`]).
    pub tensors_at: u32,
    /// Word offset of the per-tensor norms in the partials buffer.
    pub tensor_norms_at: u32,
    /// Word offset of the segment table of packed chunks in `meta` (see [`crate::plan`]).
    pub segments_at: u32,
    /// Micro-batches per optimizer step ([`FLAG_ACCUMULATE`]).
    pub accumulate: u32,
    /// The type gradient arithmetic rounds to (`DTYPE_*`): pure 16-bit training with
    /// clipping rounds each of `clip_grad_norm_`'s ops to the 16-bit type, as PyTorch does on
    /// 16-bit `p.grad`; else f32 (no rounding).
    pub grad_round: u32,
    /// Word offset in `meta` of the stochastic rounding table (0: round to nearest): the
    /// seed (2 words), then each chunk's first element's index in registration order.
    pub sr_at: u32,
    /// Ranks whose gradient-norm partials the prologue folds ([`FLAG_SHARDED`]), else 0.
    pub n_ranks: u32,
}

impl Globals {
    /// The uniform block for `config` with `n_groups` groups; the `meta` offsets (and the
    /// schedule region's) are left 0.
    pub fn new(config: &AdamWConfig, n_groups: u32) -> Self {
        let (b1, b2) = config.betas;
        let ln = |b: f64| if b > 0.0 { b.ln() as f32 } else { LN_ZERO };
        let omb1 = (1.0 - b1) as f32;
        Globals {
            steps_per_epoch: config.steps_per_epoch.max(1),
            flags: [
                (config.amsgrad, FLAG_AMSGRAD),
                (config.maximize, FLAG_MAXIMIZE),
                (config.loss_scaling, FLAG_LOSS_SCALE),
                (config.max_grad_norm.is_some(), FLAG_CLIP),
                (
                    config.grad_norm_order == GradNormOrder::TorchCpu,
                    FLAG_TORCH_NORM,
                ),
                (config.schedule.cycles_momentum(), FLAG_CYCLE_MOMENTUM),
                (config.schedule.needs_metric(), FLAG_PLATEAU),
                (
                    config.grad_scaler.is_some(),
                    FLAG_GRAD_SCALER | FLAG_LOSS_SCALE,
                ),
                (config.accumulate > 1, FLAG_ACCUMULATE),
            ]
            .iter()
            .filter(|(on, _)| *on)
            .fold(0, |flags, (_, bit)| flags | bit),
            max_grad_norm: config.max_grad_norm.unwrap_or(0.0) as f32,
            n_groups,
            eps: config.eps as f32,
            beta1: b1 as f32,
            beta2: b2 as f32,
            one_minus_beta1: omb1,
            one_minus_beta2: (1.0 - b2) as f32,
            lerp_big_coeff: omb1 - 1.0,
            ln_beta1: ln(b1),
            ln_beta2: ln(b2),
            growth_interval: config.grad_scaler.map_or(0, |s| s.growth_interval),
            ema_weight: config.ema_decay.map_or(0.0, |d| (1.0 - d) as f32),
            accumulate: config.accumulate,
            grad_round: if config.precision.is_pure_16bit() && config.max_grad_norm.is_some() {
                config.precision.grad.code()
            } else {
                0
            },
            growth_factor: config.grad_scaler.map_or(0.0, |s| s.growth_factor as f32),
            backoff_factor: config.grad_scaler.map_or(0.0, |s| s.backoff_factor as f32),
            ..Default::default()
        }
    }
}

/// The `DispatchInfo` uniform of one `update` dispatch: which chunks of the chunk table it
/// covers and the width of its 2-D grid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct DispatchInfo {
    /// Index of its first chunk in the chunk table.
    pub first_chunk: u32,
    /// Number of chunks.
    pub n_chunks: u32,
    /// Workgroups along x (the grid is `grid_x * ceil(n_chunks / grid_x)`).
    pub grid_x: u32,
    /// Index of its first tensor in the tensor table ([`FLAG_TORCH_NORM`]).
    pub first_tensor: u32,
    /// Number of its tensors.
    pub n_tensors: u32,
    /// Its first `n_runs` chunks are runs of one tensor (the `update` entry point), the rest
    /// packed chunks of short tensors (`update_packed`).
    pub n_runs: u32,
    /// Workgroups along x of the `update_packed` grid.
    pub packed_grid_x: u32,
    /// Which view of the engine's windows is bound: [`VIEWS_VEC4`] or [`VIEWS_F32`].
    pub views: u32,
}

/// [`DispatchInfo::views`]: the vec4 views of the param and grad windows are bound (bindings
/// 14 and 15), and single elements are components of them.
pub const VIEWS_VEC4: u32 = 0;
/// [`DispatchInfo::views`]: only the f32 views are bound (bindings 3 and 4): a window whose
/// last 16-byte unit would pass its buffer's end, or the device's binding limit.
pub const VIEWS_F32: u32 = 1;

/// The compiled kernel: its pipelines and their bind group layouts.
#[derive(Debug)]
pub struct Kernel {
    /// Layout of the prologue's bind group: globals, meta (read-write).
    pub prologue_layout: wgpu::BindGroupLayout,
    /// Layout of an update bind group: globals, dispatch info, meta, param, grad, m, v, v_max,
    /// and the vec4 views of param and grad.
    pub update_layout: wgpu::BindGroupLayout,
    /// Layout of a reduce bind group: globals, dispatch info, meta, grad, amp, partials.
    pub reduce_layout: wgpu::BindGroupLayout,
    /// The `reduce` entry point (gradient norm and non-finite check, per chunk), where the
    /// config clips or scales the loss in the compensated norm order.
    pub reduce: Option<wgpu::ComputePipeline>,
    /// The `tensor_norms` entry point (per-tensor norms in PyTorch's CPU order), where the
    /// config clips or scales the loss in that order.
    pub tensor_norms: Option<wgpu::ComputePipeline>,
    /// The `prologue` entry point.
    pub prologue: wgpu::ComputePipeline,
    /// The `update` entry point (chunks that are runs of one tensor).
    pub update: wgpu::ComputePipeline,
    /// The `update_packed` entry point (packed chunks of short tensors).
    pub update_packed: wgpu::ComputePipeline,
    /// Layout of an `update_mixed` bind group: globals, dispatch info, meta, and the param,
    /// grad, m, v, v_max and master streams as 32-bit words.
    pub update_mixed_layout: wgpu::BindGroupLayout,
    /// The `update_mixed` entry point, for the precision the kernel was built for (`None`
    /// when it is f32 throughout).
    pub update_mixed: Option<wgpu::ComputePipeline>,
    /// Layout of an `accumulate` bind group: globals, dispatch info, meta, the engine's
    /// gradients and the accumulator.
    pub accumulate_layout: wgpu::BindGroupLayout,
    /// The `accumulate` entry point (`None` without accumulation).
    pub accumulate: Option<wgpu::ComputePipeline>,
    /// Layout of the `fold_partials` bind group: globals, partials.
    pub fold_layout: wgpu::BindGroupLayout,
    /// The `fold_partials` entry point (a shard's own gradient-norm entry), for a shard that
    /// reduces.
    pub fold_partials: Option<wgpu::ComputePipeline>,
}

/// How a binding is bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindingKind {
    /// The `Globals` uniform block.
    Globals,
    /// The `DispatchInfo` uniform block.
    DispatchInfo,
    /// A read-only storage buffer.
    StorageRead,
    /// A read-write storage buffer.
    StorageReadWrite,
}

/// One bind group layout of [`BINDINGS`].
#[derive(Clone, Copy, Debug)]
pub struct LayoutBindings {
    /// The layout's name.
    pub name: &'static str,
    /// The entry points that use it.
    pub entry_points: &'static [&'static str],
    /// Its bindings.
    pub bindings: &'static [(u32, BindingKind)],
}

/// The kernel's one binding table: for each bind group layout, the entry points that use it
/// and its bindings. The layouts are built from it, and `tests/kernel.rs` checks it against
/// every entry point of the WGSL with naga (each global an entry point uses is bound here with
/// its kind and access, and each binding listed is used), so the two cannot drift apart.
pub const BINDINGS: &[LayoutBindings] = &[
    LayoutBindings {
        name: "prologue",
        entry_points: &["prologue"],
        bindings: &[
            (0, BindingKind::Globals),
            (8, BindingKind::StorageReadWrite),  // meta_rw
            (11, BindingKind::StorageReadWrite), // amp_rw (the control buffer)
            (13, BindingKind::StorageRead),      // partials_ro
        ],
    },
    LayoutBindings {
        name: "update",
        entry_points: &["update", "update_packed"],
        bindings: &[
            (0, BindingKind::Globals),
            (1, BindingKind::DispatchInfo),
            (2, BindingKind::StorageRead),       // meta_ro
            (3, BindingKind::StorageReadWrite),  // param
            (4, BindingKind::StorageReadWrite),  // grad
            (5, BindingKind::StorageReadWrite),  // exp_avg
            (6, BindingKind::StorageReadWrite),  // exp_avg_sq
            (7, BindingKind::StorageReadWrite),  // max_exp_avg_sq
            (14, BindingKind::StorageReadWrite), // param4
            (15, BindingKind::StorageReadWrite), // grad4
        ],
    },
    LayoutBindings {
        name: "update_mixed",
        entry_points: &["update_mixed"],
        bindings: &[
            (0, BindingKind::Globals),
            (1, BindingKind::DispatchInfo),
            (2, BindingKind::StorageRead),       // meta_ro
            (16, BindingKind::StorageReadWrite), // param_w
            (17, BindingKind::StorageRead),      // grad_w
            (18, BindingKind::StorageReadWrite), // m_w
            (19, BindingKind::StorageReadWrite), // v_w
            (20, BindingKind::StorageReadWrite), // vmax_w
            (21, BindingKind::StorageReadWrite), // master_w
            (22, BindingKind::StorageReadWrite), // ema_w
        ],
    },
    LayoutBindings {
        name: "accumulate",
        entry_points: &["accumulate"],
        bindings: &[
            (0, BindingKind::Globals),
            (1, BindingKind::DispatchInfo),
            (2, BindingKind::StorageRead),       // meta_ro
            (17, BindingKind::StorageRead),      // grad_w (the engine's)
            (23, BindingKind::StorageReadWrite), // acc_w
        ],
    },
    LayoutBindings {
        name: "reduce",
        entry_points: &["reduce", "tensor_norms"],
        bindings: &[
            (0, BindingKind::Globals),
            (1, BindingKind::DispatchInfo),
            (2, BindingKind::StorageRead),       // meta_ro
            (4, BindingKind::StorageReadWrite),  // grad
            (10, BindingKind::StorageRead),      // amp_ro
            (12, BindingKind::StorageReadWrite), // partials
        ],
    },
    LayoutBindings {
        name: "fold",
        entry_points: &["fold_partials"],
        bindings: &[
            (0, BindingKind::Globals),
            (12, BindingKind::StorageReadWrite), // partials
        ],
    },
];

/// The most storage buffers one of the kernel's pipelines binds (the `update` and
/// `update_mixed` layouts: 8, WebGPU's default `max_storage_buffers_per_shader_stage`).
pub fn storage_buffers_per_stage() -> u32 {
    BINDINGS
        .iter()
        .map(|l| {
            l.bindings
                .iter()
                .filter(|(_, k)| {
                    matches!(k, BindingKind::StorageRead | BindingKind::StorageReadWrite)
                })
                .count() as u32
        })
        .max()
        .unwrap_or(0)
}

/// The bindings of layout `name` in [`BINDINGS`].
fn bindings(name: &str) -> &'static [(u32, BindingKind)] {
    BINDINGS
        .iter()
        .find(|l| l.name == name)
        .map(|l| l.bindings)
        .expect("a layout of BINDINGS")
}

fn layout_entries(name: &str) -> Vec<wgpu::BindGroupLayoutEntry> {
    bindings(name)
        .iter()
        .map(|&(b, kind)| match kind {
            BindingKind::Globals => uniform_entry(b, std::mem::size_of::<Globals>() as u64),
            BindingKind::DispatchInfo => {
                uniform_entry(b, std::mem::size_of::<DispatchInfo>() as u64)
            }
            BindingKind::StorageRead => storage_entry(b, true),
            BindingKind::StorageReadWrite => storage_entry(b, false),
        })
        .collect()
}

fn uniform_entry(binding: u32, size: u64) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: false,
            min_binding_size: wgpu::BufferSize::new(size),
        },
        count: None,
    }
}

fn storage_entry(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

impl Kernel {
    /// Compiles the shader and builds its pipelines on `device`, with `elems_per_thread`
    /// elements per invocation of `update` and `reduce`, and the mixed-precision update for
    /// `config`'s precision and EMA unless it needs neither; f16 through WGSL's `f16` type with
    /// `native_f16` (the device needs `SHADER_F16`). Only the pipelines `config` uses are
    /// built (each costs a compile of the module's entry point: seconds on lavapipe); the
    /// gradient norm's with clipping or loss scaling, `fold_partials` for a `sharded` one.
    pub fn new(
        device: &wgpu::Device,
        elems_per_thread: u32,
        config: &AdamWConfig,
        native_f16: bool,
        sharded: bool,
    ) -> Self {
        let precision = &config.precision;
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("wgpu-adamw kernel"),
            source: wgpu::ShaderSource::Wgsl(
                if native_f16 {
                    SHADER_SOURCE_NATIVE_F16
                } else {
                    SHADER_SOURCE
                }
                .into(),
            ),
        });
        let layout = |name: &str| {
            device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(name),
                entries: &layout_entries(name),
            })
        };
        let prologue_layout = layout("prologue");
        let update_layout = layout("update");
        let constants = [("ELEMS_PER_THREAD", f64::from(elems_per_thread))];
        let pipeline_with =
            |layout: &wgpu::BindGroupLayout, entry: &str, constants: &[(&str, f64)]| {
                let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: Some(entry),
                    bind_group_layouts: &[Some(layout)],
                    immediate_size: 0,
                });
                device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(entry),
                    layout: Some(&pl),
                    module: &module,
                    entry_point: Some(entry),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants,
                        ..Default::default()
                    },
                    cache: None,
                })
            };
        let pipeline =
            |layout: &wgpu::BindGroupLayout, entry: &str| pipeline_with(layout, entry, &constants);
        let update_mixed_layout = layout("update_mixed");
        let update_mixed = config.needs_mixed_update().then(|| {
            let p = precision;
            let mixed = [
                ("ELEMS_PER_THREAD", f64::from(elems_per_thread)),
                ("P_DTYPE", f64::from(p.param.code())),
                ("G_DTYPE", f64::from(config.grad_read_dtype().code())),
                ("S_DTYPE", f64::from(p.state_dtype().code())),
                ("MASTER", f64::from(u8::from(p.master_weights))),
                ("EMA", f64::from(u8::from(config.ema_decay.is_some()))),
                (
                    "SR",
                    f64::from(u8::from(config.stochastic_rounding.is_some())),
                ),
                ("E_DTYPE", f64::from(config.ema_dtype().code())),
            ];
            pipeline_with(&update_mixed_layout, "update_mixed", &mixed)
        });
        let accumulate_layout = layout("accumulate");
        let accumulate = (config.accumulate > 1).then(|| {
            let acc = [
                ("G_DTYPE", f64::from(precision.grad.code())),
                ("A_DTYPE", f64::from(config.grad_acc_dtype().code())),
            ];
            pipeline_with(&accumulate_layout, "accumulate", &acc)
        });
        let reduce_layout = layout("reduce");
        let prologue = pipeline(&prologue_layout, "prologue");
        let update = pipeline(&update_layout, "update");
        let update_packed = pipeline(&update_layout, "update_packed");
        // The gradient norm reads 16-bit gradients too.
        let reduce_constants = [
            ("ELEMS_PER_THREAD", f64::from(elems_per_thread)),
            ("G_DTYPE", f64::from(config.grad_read_dtype().code())),
        ];
        let norm = config.reduces_gradients();
        let torch_order = config.grad_norm_order == GradNormOrder::TorchCpu;
        let reduce = (norm && !torch_order)
            .then(|| pipeline_with(&reduce_layout, "reduce", &reduce_constants));
        let tensor_norms = (norm && torch_order)
            .then(|| pipeline_with(&reduce_layout, "tensor_norms", &reduce_constants));
        let fold_layout = layout("fold");
        let fold_partials = (norm && sharded).then(|| pipeline(&fold_layout, "fold_partials"));
        Self {
            fold_layout,
            fold_partials,
            prologue_layout,
            update_layout,
            reduce_layout,
            prologue,
            update,
            update_packed,
            reduce,
            tensor_norms,
            update_mixed_layout,
            update_mixed,
            accumulate_layout,
            accumulate,
        }
    }
}
