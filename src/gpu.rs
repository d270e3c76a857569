//! The host driver of the fused kernel: registers the engine's buffers, lays out the
//! optimizer's own state, and records one optimizer step as one compute pass.

use crate::config::{AdamWConfig, GradNormOrder, GroupConfig};
use crate::error::{Error, Result};
use crate::kernel::{
    DispatchInfo, Globals, Kernel, CONTROL_LR_SCALE, CONTROL_METRIC, CONTROL_WORDS, COUNTER_ADAM,
    COUNTER_SCHED, COUNTER_WORDS, ELEMS_PER_THREAD, SCALAR_WORDS, STEP_SKIPPED, WORKGROUP,
};
use crate::plan::{window_of, GpuPlan, PlanLimits, PlanTensor, TensorInfo};
use crate::schedule::program::{plateau_lr_at, split, Region};
use crate::state::{OptimizerState, TensorState};
use crate::twin::Counters;
use std::collections::HashMap;

/// One tensor handed to the optimizer: its parameters and gradients live in the engine's own
/// buffers, as `len` f32 elements starting at a byte offset. Both buffers need
/// `BufferUsages::STORAGE`; offsets must be multiples of 4.
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
    /// Number of f32 elements.
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
}

#[derive(Debug)]
struct Dispatch {
    bind_group: wgpu::BindGroup,
    reduce_bind_group: wgpu::BindGroup,
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
    arenas: Arenas,
    tensors: Vec<TensorInfo>,
    prologue_bind_group: wgpu::BindGroup,
    dispatches: Vec<Dispatch>,
    max_binding_size: u64,
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
    pub fn with_options(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        config: AdamWConfig,
        groups: Vec<ParamGroup>,
        options: GpuOptions,
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

        validate_bindings(&groups)?;
        // Everything that touches the device, in error scopes and with wgpu's panics caught.
        checked(device, || {
            // The distinct engine buffers, by index (wgpu hashes buffers by identity).
            let mut buffers: Vec<wgpu::Buffer> = Vec::new();
            #[allow(clippy::mutable_key_type)]
            let mut buffer_index: HashMap<wgpu::Buffer, usize> = HashMap::new();
            let mut index_of = |b: &wgpu::Buffer| {
                *buffer_index.entry(b.clone()).or_insert_with(|| {
                    buffers.push(b.clone());
                    buffers.len() - 1
                })
            };
            let plan_tensors: Vec<PlanTensor> = groups
                .iter()
                .enumerate()
                .flat_map(|(gi, g)| g.tensors.iter().map(move |t| (gi, t)))
                .map(|(gi, t)| PlanTensor {
                    group: gi,
                    param: (index_of(&t.param), t.param.size(), t.param_offset),
                    grad: (index_of(&t.grad), t.grad.size(), t.grad_offset),
                    len: t.len,
                })
                .collect();
            let plan = GpuPlan::new(
                &plan_tensors,
                PlanLimits {
                    max_binding,
                    stride,
                    chunk,
                    torch_norm: config.grad_norm_order == GradNormOrder::TorchCpu
                        && (config.max_grad_norm.is_some() || config.loss_scaling),
                },
            )?;
            let GpuPlan {
                arena_fill,
                keys,
                tensor_lists,
                ..
            } = &plan;
            let kernel = Kernel::new(device, ept);
            let n_groups = groups.len() as u32;
            let total_chunks = plan.total_chunks();
            let mut globals = Globals::new(&config, n_groups);
            globals.groups_at = COUNTER_WORDS;
            globals.scalars_at = globals.groups_at + 4 * n_groups;
            globals.chunks_at = globals.scalars_at + SCALAR_WORDS * n_groups;
            globals.n_chunks = total_chunks as u32;
            globals.n_tensors = plan.tensors.len() as u32;
            let tables = plan.meta_tables(globals.chunks_at);
            globals.segments_at = tables.segments_at;
            globals.tensors_at = tables.end;
            globals.tensor_norms_at = 4 * total_chunks as u32;
            let total_tensor_entries: usize = tensor_lists.iter().map(Vec::len).sum();
            let ctxs: Vec<_> = configs
                .iter()
                .enumerate()
                .map(|(i, g)| config.group_ctx(i, g))
                .collect();
            let region = Region::new(&config.schedule, &ctxs);
            globals.sched_at = globals.tensors_at + 4 * total_tensor_entries as u32;
            globals.sched_stride = region.stride;
            globals.sched_state_at = region.state_at;
            let meta_words = globals.sched_at as usize + region.words.len();
            let mut meta_init = vec![0u32; meta_words];
            meta_init[globals.sched_at as usize..].copy_from_slice(&region.words);
            for (gi, g) in groups.iter().enumerate() {
                let (lr, wd) = config.resolve(&g.config);
                let at = globals.groups_at as usize + 4 * gi;
                meta_init[at] = (lr as f32).to_bits();
                meta_init[at + 1] = (wd as f32).to_bits();
            }
            let tables = tables
                .chunks
                .iter()
                .chain(&tables.segments)
                .chain(&tables.maps)
                .chain(tensor_lists.iter().flatten().flatten());
            for (word, &w) in meta_init[globals.chunks_at as usize..globals.sched_at as usize]
                .iter_mut()
                .zip(tables)
            {
                *word = w;
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
            let info_at = |i: usize| globals_size.div_ceil(ualign) * ualign + i as u64 * ualign;
            let uniform = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-adamw uniforms"),
                size: info_at(keys.len()).max(info_at(0) + ualign),
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            queue.write_buffer(&uniform, 0, bytemuck::bytes_of(&globals));

            let state_buffer = |label: &str, elems: u64| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: (elems * 4).max(16),
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_DST
                        | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                })
            };
            let arenas = Arenas {
                exp_avg: arena_fill
                    .iter()
                    .map(|&n| state_buffer("exp_avg", n))
                    .collect(),
                exp_avg_sq: arena_fill
                    .iter()
                    .map(|&n| state_buffer("exp_avg_sq", n))
                    .collect(),
                max_exp_avg_sq: if config.amsgrad {
                    arena_fill
                        .iter()
                        .map(|&n| state_buffer("max_exp_avg_sq", n))
                        .collect()
                } else {
                    vec![state_buffer("max_exp_avg_sq (unused)", 4)]
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
                bytemuck::cast_slice(&[1.0f32, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0]),
            );
            let partials = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-adamw grad-norm partials"),
                size: (16 * total_chunks as u64 + 8 * plan.tensors.len() as u64).max(16),
                usage: storage,
                mapped_at_creation: false,
            });

            // wgpu resolves a buffer handle by its index in the device's own wgpu::Instance, so a
            // buffer of another instance may name one of the buffers just created here.
            let own: Vec<&wgpu::Buffer> = [&meta, &uniform, &amp, &partials]
                .into_iter()
                .chain(&arenas.exp_avg)
                .chain(&arenas.exp_avg_sq)
                .chain(&arenas.max_exp_avg_sq)
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
            let max_dim = limits.max_compute_workgroups_per_dimension.max(1);
            let mut dispatches = Vec::new();
            let mut first_chunk = 0u32;
            let mut first_tensor = 0u32;
            for (k, key) in keys.iter().enumerate() {
                let &(p_buf, p_win, g_buf, g_win, arena) = key;
                let (param, grad) = (&buffers[p_buf], &buffers[g_buf]);
                let n_chunks = plan.chunk_lists[k].len() as u32;
                let n_runs = plan.runs_of(k) as u32;
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
                let (grid_x, grid_y) = grid(n_chunks)?.unwrap_or((1, 1));
                let run_grid = grid(n_runs)?;
                let packed_grid = grid(n_chunks - n_runs)?;
                let n_tensors = tensor_lists[k].len() as u32;
                let info = DispatchInfo {
                    first_chunk,
                    n_chunks,
                    grid_x,
                    first_tensor,
                    n_tensors,
                    n_runs,
                    packed_grid_x: packed_grid.map_or(1, |g| g.0),
                    _pad: 0,
                };
                queue.write_buffer(&uniform, info_at(k), bytemuck::bytes_of(&info));
                first_chunk += n_chunks;
                first_tensor += n_tensors;
                let (_, p_size) = window_of(p_win, param.size(), max_binding, stride);
                let (_, g_size) = window_of(g_win, grad.size(), max_binding, stride);
                let vmax = &arenas.max_exp_avg_sq[if config.amsgrad { arena } else { 0 }];
                let stand_in = &arenas.max_exp_avg_sq[0];
                // Globals, this dispatch's chunk range, meta: shared by its update and reduce.
                let head = || {
                    let info = std::mem::size_of::<DispatchInfo>() as u64;
                    vec![
                        (0, binding(&uniform, 0, globals_size)),
                        (1, binding(&uniform, info_at(k), info)),
                        (2, meta.as_entire_binding()),
                        (4, binding(grad, g_win, g_size / 4 * 4)),
                    ]
                };
                let mut update_entries = head();
                update_entries.extend([
                    (3, binding(param, p_win, p_size / 4 * 4)),
                    (5, arenas.exp_avg[arena].as_entire_binding()),
                    (6, arenas.exp_avg_sq[arena].as_entire_binding()),
                    (7, vmax.as_entire_binding()),
                    (14, vec4_view(param, p_win, p_size, stand_in)),
                    (15, vec4_view(grad, g_win, g_size, stand_in)),
                ]);
                let bind_group = make_bind_group(
                    device,
                    "wgpu-adamw update",
                    &kernel.update_layout,
                    update_entries,
                );
                let mut reduce_entries = head();
                reduce_entries.extend([
                    (10, amp.as_entire_binding()),
                    (12, partials.as_entire_binding()),
                ]);
                let reduce_bind_group = make_bind_group(
                    device,
                    "wgpu-adamw reduce",
                    &kernel.reduce_layout,
                    reduce_entries,
                );
                dispatches.push(Dispatch {
                    bind_group,
                    reduce_bind_group,
                    grid: (grid_x, grid_y),
                    run_grid,
                    packed_grid,
                    tensor_groups: n_tensors.div_ceil(8),
                });
            }

            Ok(Self {
                device: device.clone(),
                queue: queue.clone(),
                config,
                groups: std::sync::RwLock::new(configs),
                kernel,
                globals,
                meta,
                amp,
                arenas,
                tensors: plan.tensors,
                prologue_bind_group,
                dispatches,
                max_binding_size: max_binding,
            })
        })?
    }

    /// The configuration.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Per-group overrides, in group order (with the changes made at run time).
    pub fn groups(&self) -> Vec<GroupConfig> {
        self.groups.read().expect("not poisoned").clone()
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

    /// Records one optimizer step into `pass`, an open compute pass of the engine's.
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
        if self.config.loss_scaling || self.config.max_grad_norm.is_some() {
            if self.config.grad_norm_order == GradNormOrder::TorchCpu {
                pass.set_pipeline(&self.kernel.tensor_norms);
                for d in self.dispatches.iter().filter(|d| d.tensor_groups > 0) {
                    pass.set_bind_group(0, &d.reduce_bind_group, &[]);
                    pass.dispatch_workgroups(d.tensor_groups, 1, 1);
                }
            } else {
                pass.set_pipeline(&self.kernel.reduce);
                for d in &self.dispatches {
                    pass.set_bind_group(0, &d.reduce_bind_group, &[]);
                    pass.dispatch_workgroups(d.grid.0, d.grid.1, 1);
                }
            }
        }
        pass.set_pipeline(&self.kernel.prologue);
        pass.set_bind_group(0, &self.prologue_bind_group, &[]);
        pass.dispatch_workgroups(1, 1, 1);
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

    /// Records and submits one step; does not wait for it to run. wgpu's validation and
    /// out-of-memory errors (for example an engine buffer destroyed while registered) are
    /// caught with error scopes and returned, never passed to the device's uncaptured-error
    /// handler (whose default panics).
    pub fn step(&self) -> Result<wgpu::SubmissionIndex> {
        checked(&self.device, || {
            let mut encoder = self.device.create_command_encoder(&Default::default());
            self.encode_step(&mut encoder);
            self.queue.submit([encoder.finish()])
        })
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
        let at = u64::from(self.globals.scalars_at) * 4;
        let size = 4 * u64::from(SCALAR_WORDS) * self.n_groups() as u64;
        let words: Vec<u32> = self.read_words(&self.meta, at, size)?;
        Ok(words
            .chunks(SCALAR_WORDS as usize)
            .map(|s| f32::from_bits(s[word]))
            .collect())
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
        let w = self.read_words(&self.meta, 0, 8)?;
        Ok(Counters {
            sched: w[COUNTER_SCHED],
            adam: w[COUNTER_ADAM],
        })
    }

    /// Whether the last step was skipped (non-finite gradients under loss scaling).
    pub fn read_skipped(&self) -> Result<bool> {
        Ok(self.read_words(&self.meta, 4 * STEP_SKIPPED as u64, 4)?[0] != 0)
    }

    /// The control buffer, 8 words the engine may bind or copy:
    /// `[loss_scale: f32, found_inf: u32, grad_norm: f32, clip_coef: f32, metric: f32,
    /// lr_scale: f32, 0, 0]`. The engine may write the loss scale (word 0), the plateau
    /// metric (word 4) and the lr multiplier (word 5) on the device; the rest is written by
    /// each step. The loss scale is read by every step with loss scaling on (the buffer has
    /// `STORAGE | COPY_DST | COPY_SRC`). Words 1-3 are written by
    /// each step with loss scaling or clipping on: whether any gradient was non-finite, the
    /// global L2 norm of the unscaled gradients, and the clipping coefficient applied.
    pub fn amp_buffer(&self) -> &wgpu::Buffer {
        &self.amp
    }

    /// Writes the loss scale (takes effect at the next submit).
    pub fn set_loss_scale(&self, scale: f32) {
        self.queue
            .write_buffer(&self.amp, 0, bytemuck::bytes_of(&scale));
    }

    /// Reads back the loss scale.
    pub fn read_loss_scale(&self) -> Result<f32> {
        Ok(f32::from_bits(self.read_words(&self.amp, 0, 4)?[0]))
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

    /// Reads back the whole state (for checkpoints and tests). It is a snapshot of one
    /// moment of the queue: the counters, the loss scale and every moment buffer are copied
    /// by one submit, so a step submitted by another thread lands either wholly before it or
    /// wholly after it.
    pub fn state(&self) -> Result<OptimizerState> {
        let a = &self.arenas;
        let moments: Vec<&wgpu::Buffer> = a
            .exp_avg
            .iter()
            .chain(&a.exp_avg_sq)
            .chain(if self.config.amsgrad {
                &a.max_exp_avg_sq[..]
            } else {
                &[]
            })
            .collect();
        let g = &self.globals;
        let state_at = 4 * u64::from(g.sched_at + g.sched_state_at);
        let mut ranges = vec![
            (&self.meta, 0, 4 * u64::from(COUNTER_WORDS)),
            (&self.amp, 0, 4 * CONTROL_WORDS as u64),
            (&self.meta, state_at, self.meta.size() - state_at),
        ];
        ranges.extend(moments.iter().map(|b| (*b, 0, b.size())));
        let mut words = read_buffers(&self.device, &self.queue, &ranges)?.into_iter();
        let counters = words.next().expect("one per range");
        let control = words.next().expect("one per range");
        let schedule_state = words.next().expect("one per range");
        let mut arenas: Vec<Vec<f32>> = words.map(|w| bytemuck::cast_slice(&w).to_vec()).collect();
        let n = a.exp_avg.len();
        let vmax = self.config.amsgrad.then(|| arenas.split_off(2 * n));
        let v = arenas.split_off(n);
        let m = arenas;
        let gather = |arenas: &[Vec<f32>], t: &TensorInfo| -> Vec<f32> {
            let mut out = Vec::with_capacity(t.len as usize);
            for p in &t.pieces {
                let s = p.state_offset as usize;
                out.extend_from_slice(&arenas[p.arena][s..s + p.len as usize]);
            }
            out
        };
        Ok(OptimizerState {
            config: self.config.clone(),
            groups: self.groups(),
            counters: Counters {
                sched: counters[COUNTER_SCHED],
                adam: counters[COUNTER_ADAM],
            },
            loss_scale: f32::from_bits(control[0]),
            schedule_state,
            metric: f32::from_bits(control[CONTROL_METRIC]),
            lr_scale: f32::from_bits(control[CONTROL_LR_SCALE]),
            tensors: self
                .tensors
                .iter()
                .map(|t| TensorState {
                    group: t.group,
                    exp_avg: gather(&m, t),
                    exp_avg_sq: gather(&v, t),
                    max_exp_avg_sq: vmax.as_ref().map(|a| gather(a, t)),
                })
                .collect(),
        })
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
        let state_len = ((self.meta.size() - state_at) / 4) as usize;
        let mut groups = self.groups.write().expect("not poisoned");
        state.check_matches(&self.config, &groups, &shape, state_len)?;
        for (i, gc) in state.groups.iter().enumerate() {
            self.config.validate_group_at(i, gc)?;
        }
        for (t, s) in self.tensors.iter().zip(&state.tensors) {
            let mut done = 0usize;
            for p in &t.pieces {
                let range = done..done + p.len as usize;
                let at = p.state_offset * 4;
                let write = |bufs: &[wgpu::Buffer], data: &[f32]| {
                    self.queue.write_buffer(
                        &bufs[p.arena],
                        at,
                        bytemuck::cast_slice(&data[range.clone()]),
                    )
                };
                write(&self.arenas.exp_avg, &s.exp_avg);
                write(&self.arenas.exp_avg_sq, &s.exp_avg_sq);
                if let Some(vmax) = &s.max_exp_avg_sq {
                    write(&self.arenas.max_exp_avg_sq, vmax);
                }
                done += p.len as usize;
            }
        }
        let counters = [state.counters.sched, state.counters.adam];
        self.queue
            .write_buffer(&self.meta, 0, bytemuck::cast_slice(&counters));
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
pub(crate) fn checked<T>(device: &wgpu::Device, f: impl FnOnce() -> T) -> Result<T> {
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    let oom = pollster::block_on(oom.pop());
    let validation = pollster::block_on(validation.pop());
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
    match oom.or(validation) {
        Some(e) => Err(Error::Device(e.to_string())),
        None => Ok(out),
    }
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

/// Reads several ranges with one submit, so that they are one snapshot of the queue.
fn read_buffers(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    ranges: &[(&wgpu::Buffer, u64, u64)],
) -> Result<Vec<Vec<u32>>> {
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
    let (tx, rx) = std::sync::mpsc::channel();
    for (i, s) in staging.iter().enumerate() {
        if let Some(s) = s {
            let tx = tx.clone();
            s.map_async(wgpu::MapMode::Read, .., move |r| {
                let _ = tx.send((i, r));
            });
        }
    }
    drop(tx);
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| Error::Readback(e.to_string()))?;
    // The poll has resolved every mapping; another thread polling the same device may be the
    // one that runs a callback, so wait for each to arrive rather than assume it has.
    for _ in staging.iter().flatten() {
        match rx.recv() {
            Ok((_, r)) => r.map_err(|e| Error::Readback(e.to_string()))?,
            Err(_) => return Err(Error::Readback("a map callback was dropped".into())),
        }
    }
    staging
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

/// The vec4 view of a window: its whole 16-byte units. A window shorter than 16 bytes has
/// none (its tensors take the scalar path), and `stand_in` fills the binding.
fn vec4_view<'a>(
    buffer: &'a wgpu::Buffer,
    offset: u64,
    size: u64,
    stand_in: &'a wgpu::Buffer,
) -> wgpu::BindingResource<'a> {
    if size >= 16 {
        binding(buffer, offset, size / 16 * 16)
    } else {
        stand_in.as_entire_binding()
    }
}

fn validate_bindings(groups: &[ParamGroup]) -> Result<()> {
    #[allow(clippy::mutable_key_type)] // hashed by identity
    let mut ranges: HashMap<wgpu::Buffer, Vec<(u64, u64, usize, bool)>> = HashMap::new();
    let mut index = 0usize;
    for g in groups {
        for t in &g.tensors {
            let err = |reason: String| Error::InvalidTensor {
                tensor: index,
                reason,
            };
            for (what, buf, off) in [
                ("param", &t.param, t.param_offset),
                ("grad", &t.grad, t.grad_offset),
            ] {
                if off % 4 != 0 {
                    return Err(err(format!("{what} offset {off} is not a multiple of 4")));
                }
                if !buf.usage().contains(wgpu::BufferUsages::STORAGE) {
                    return Err(err(format!("{what} buffer lacks BufferUsages::STORAGE")));
                }
                let end = t.len.checked_mul(4).and_then(|b| b.checked_add(off));
                if end.is_none_or(|e| e > buf.size()) {
                    return Err(err(format!(
                        "{what} range of {} elements at byte {off} runs past the buffer's end ({} bytes)",
                        t.len,
                        buf.size()
                    )));
                }
            }
            if t.len > 0 {
                let end = |off: u64| off + 4 * t.len;
                for (buf, off, is_param) in [
                    (&t.param, t.param_offset, true),
                    (&t.grad, t.grad_offset, false),
                ] {
                    ranges
                        .entry(buf.clone())
                        .or_default()
                        .push((off, end(off), index, is_param));
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
