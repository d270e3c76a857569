//! The GPU side: a workload's buffers, the copy roofline, the unfused baseline and the timer.

use crate::workloads::Workload;
use anyhow::{bail, Context as _, Result};
use bytemuck::{Pod, Zeroable};
use std::time::Instant;
use wgpu_adamw::wgpu;

/// Source of the copy kernel (the roofline).
pub const COPY_SHADER: &str = include_str!("../shaders/copy.wgsl");
/// Source of the unfused baseline's kernels.
pub const UNFUSED_SHADER: &str = include_str!("../shaders/unfused.wgsl");
/// Source of the mixed-precision copy kernels (the roofline of the 16-bit rows).
pub const COPY_MIXED_SHADER: &str = include_str!("../shaders/copy_mixed.wgsl");

/// Tensors start at multiples of this many elements (256 bytes) in their arena, so that every
/// piece can be bound at its own offset and read as vec4.
const ALIGN: u64 = 64;
/// vec4 elements one workgroup of the copy and unfused kernels handles (256 x 4).
const VEC4_PER_WORKGROUP: u64 = 1024;

/// How step times are measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timing {
    /// GPU time between timestamp queries at the start and end of the step's compute pass.
    Timestamp,
    /// Wall time from submit until the device reports the work done.
    Wall,
}

impl Timing {
    /// `"timestamp"` or `"wall"`, as the JSON report writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Timing::Timestamp => "timestamp",
            Timing::Wall => "wall",
        }
    }
}

/// A run of `len` elements at element `offset` of arena `arena`.
#[derive(Clone, Copy, Debug)]
pub struct Span {
    /// Index of the arena (buffer).
    pub arena: usize,
    /// Element offset in the arena.
    pub offset: u64,
    /// Number of elements.
    pub len: u64,
}

/// Where a workload's tensors live: packed one after another in arenas (one buffer per array
/// each), as an engine keeps them.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Elements of each arena (a multiple of `ALIGN`).
    pub arenas: Vec<u64>,
    /// Each tensor's place.
    pub tensors: Vec<Span>,
    /// Largest number of elements one storage binding can hold (a multiple of 4096).
    pub max_binding_elems: u64,
}

impl Layout {
    /// Packs `lens` into arenas no larger than the device allows.
    pub fn new(lens: &[usize], limits: &wgpu::Limits) -> Result<Self> {
        let max_buffer = limits.max_buffer_size / 4 / ALIGN * ALIGN;
        let max_binding_elems = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
            / 4
            / (4 * VEC4_PER_WORKGROUP)
            * (4 * VEC4_PER_WORKGROUP);
        if max_binding_elems == 0 {
            bail!("the device's storage bindings are too small");
        }
        let mut arenas = vec![0u64];
        let mut tensors = Vec::new();
        for &len in lens {
            let len = len as u64;
            let padded = len.div_ceil(ALIGN) * ALIGN;
            if padded > max_buffer {
                bail!("a tensor of {len} elements exceeds the device's largest buffer");
            }
            if arenas.last().copied().unwrap_or(0) + padded > max_buffer {
                arenas.push(0);
            }
            let arena = arenas.len() - 1;
            tensors.push(Span {
                arena,
                offset: arenas[arena],
                len,
            });
            arenas[arena] += padded;
        }
        Ok(Self {
            arenas,
            tensors,
            max_binding_elems,
        })
    }

    /// The same tensors stored as 16-bit elements, in the units of 32-bit words: every
    /// arena, offset and length halved (lengths rounded up). An [`Array`] of this layout holds
    /// this layout's 16-bit elements two to a word, at the same element offsets.
    pub fn halved(&self) -> Self {
        Self {
            arenas: self.arenas.iter().map(|&n| n / 2).collect(),
            tensors: self
                .tensors
                .iter()
                .map(|t| Span {
                    arena: t.arena,
                    offset: t.offset / 2,
                    len: t.len.div_ceil(2),
                })
                .collect(),
            max_binding_elems: self.max_binding_elems,
        }
    }

    /// Every tensor's binding for the optimizer: parameters in `p`, gradients in `g`, at this
    /// layout's element offsets, elements of `(param, grad)` bytes.
    pub fn bindings(
        &self,
        p: &Array,
        g: &Array,
        (param_bytes, grad_bytes): (u64, u64),
    ) -> Vec<wgpu_adamw::TensorBinding> {
        self.tensors
            .iter()
            .map(|t| wgpu_adamw::TensorBinding {
                param: p.buffers[t.arena].clone(),
                param_offset: t.offset * param_bytes,
                grad: g.buffers[t.arena].clone(),
                grad_offset: t.offset * grad_bytes,
                len: t.len,
            })
            .collect()
    }

    /// Every tensor cut into pieces that each fit one binding (the unfused baseline binds
    /// tensor by tensor, as PyTorch launches its kernels).
    pub fn tensor_pieces(&self) -> Vec<Span> {
        let mut out = Vec::new();
        for t in &self.tensors {
            let mut done = 0;
            while done < t.len {
                let len = (t.len - done).min(self.max_binding_elems);
                out.push(Span {
                    arena: t.arena,
                    offset: t.offset + done,
                    len,
                });
                done += len;
            }
        }
        out
    }

    /// Every arena cut into segments that each fit one binding (the copy runs over whole
    /// buffers).
    pub fn arena_segments(&self) -> Vec<Span> {
        let mut out = Vec::new();
        for (arena, &n) in self.arenas.iter().enumerate() {
            let mut done = 0;
            while done < n {
                let len = (n - done).min(self.max_binding_elems);
                out.push(Span {
                    arena,
                    offset: done,
                    len,
                });
                done += len;
            }
        }
        out
    }
}

/// One array of a workload (param, grad, a moment), one buffer per arena.
pub struct Array {
    /// Its buffers.
    pub buffers: Vec<wgpu::Buffer>,
}

impl Array {
    /// Zeroed buffers (wgpu zeroes new buffers) for every arena of `layout`.
    pub fn new(device: &wgpu::Device, layout: &Layout, label: &str) -> Self {
        let buffers = layout
            .arenas
            .iter()
            .map(|&n| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: (n * 4).max(16),
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_DST
                        | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                })
            })
            .collect();
        Self { buffers }
    }

    /// Fills every arena with `fill(element index)` in pieces of 4 Mi elements.
    pub fn upload(
        &self,
        queue: &wgpu::Queue,
        device: &wgpu::Device,
        fill: impl FnMut(u64) -> f32,
    ) -> Result<()> {
        self.upload_words(queue, device, fill)
    }

    /// [`Array::upload`] for any 32-bit word type (16-bit elements packed two to a word).
    pub fn upload_words<T: Pod>(
        &self,
        queue: &wgpu::Queue,
        device: &wgpu::Device,
        mut fill: impl FnMut(u64) -> T,
    ) -> Result<()> {
        const PIECE: u64 = 1 << 22;
        let mut global = 0u64;
        for b in &self.buffers {
            let n = b.size() / 4;
            let mut at = 0;
            while at < n {
                let len = (n - at).min(PIECE);
                let data: Vec<T> = (0..len).map(|i| fill(global + at + i)).collect();
                queue.write_buffer(b, at * 4, bytemuck::cast_slice(&data));
                queue.submit([]);
                at += len;
            }
            global += n;
            device
                .poll(wgpu::PollType::wait_indefinitely())
                .context("waiting for an upload")?;
        }
        Ok(())
    }

    /// `elem_bytes`-byte elements `[span.offset, span.offset + span.len)` of arena
    /// `span.arena`.
    fn bind_elems(&self, span: &Span, elem_bytes: u64) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffers[span.arena],
            offset: span.offset * elem_bytes,
            size: wgpu::BufferSize::new(span.len * elem_bytes),
        })
    }

    fn bind(&self, span: &Span) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffers[span.arena],
            offset: span.offset * 4,
            size: wgpu::BufferSize::new(span.len.div_ceil(4) * 16),
        })
    }
}

/// A deterministic value in `[-scale, scale)` for element `i` (a hash, no RNG dependency).
pub fn value(i: u64, seed: u64, scale: f32) -> f32 {
    let mut x = i.wrapping_add(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
}

/// The uniform of one dispatch of the copy and unfused kernels.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Info {
    n: u32,
    grid_x: u32,
    swap: u32,
    _pad: u32,
}

/// A dispatch over one span: its bind group and grid.
struct Dispatch {
    bind_group: wgpu::BindGroup,
    grid: (u32, u32),
}

impl Dispatch {
    /// Records this dispatch with the pipeline already set.
    fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(self.grid.0, self.grid.1, 1);
    }
}

/// The compute pipeline of `entry` in the WGSL `source`, its layout derived from the shader.
fn derived_pipeline(
    device: &wgpu::Device,
    label: &str,
    source: &str,
    entry: &str,
) -> wgpu::ComputePipeline {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(label),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(entry),
        layout: None,
        module: &module,
        entry_point: Some(entry),
        compilation_options: Default::default(),
        cache: None,
    })
}

fn grid(len: u64, max_dim: u32) -> (u32, u32) {
    grid_vectors(len.div_ceil(4), max_dim)
}

/// The grid of a copy over `n` vectors (1,024 per workgroup).
fn grid_vectors(n: u64, max_dim: u32) -> (u32, u32) {
    let groups = n.div_ceil(VEC4_PER_WORKGROUP).max(1);
    let x = groups.min(u64::from(max_dim));
    (x as u32, groups.div_ceil(x) as u32)
}

/// One uniform buffer holding an [`Info`] per span, each at an aligned offset.
fn infos(device: &wgpu::Device, queue: &wgpu::Queue, spans: &[Span]) -> (wgpu::Buffer, u64) {
    let vectors: Vec<u64> = spans.iter().map(|s| s.len.div_ceil(4)).collect();
    infos_of(device, queue, &vectors)
}

/// One uniform buffer holding an [`Info`] per dispatch over `vectors[i]` vectors.
fn infos_of(device: &wgpu::Device, queue: &wgpu::Queue, vectors: &[u64]) -> (wgpu::Buffer, u64) {
    let limits = device.limits();
    let stride = u64::from(limits.min_uniform_buffer_offset_alignment).max(16);
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("bench infos"),
        size: stride * vectors.len().max(1) as u64,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    for (i, &n) in vectors.iter().enumerate() {
        let (grid_x, _) = grid_vectors(n, limits.max_compute_workgroups_per_dimension);
        let info = Info {
            n: n as u32,
            grid_x,
            swap: 0,
            _pad: 0,
        };
        queue.write_buffer(&buffer, i as u64 * stride, bytemuck::bytes_of(&info));
    }
    (buffer, stride)
}

fn info_binding(buffer: &wgpu::Buffer, stride: u64, i: usize) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer,
        offset: i as u64 * stride,
        size: wgpu::BufferSize::new(std::mem::size_of::<Info>() as u64),
    })
}

/// The baseline's own state arrays, shared by the copy kernel (which leaves them unchanged).
pub struct BaselineArrays {
    /// exp_avg.
    pub m: Array,
    /// exp_avg_sq.
    pub v: Array,
    /// max_exp_avg_sq (amsgrad only).
    pub vmax: Option<Array>,
    /// The denominator temporary of the unfused path.
    pub denom: Array,
}

/// The copy roofline: one dispatch per binding-sized segment of the arenas.
pub struct CopyKernel {
    pipeline: wgpu::ComputePipeline,
    dispatches: Vec<Dispatch>,
    _infos: wgpu::Buffer,
}

impl CopyKernel {
    /// Builds the copy over `p`, `g` and the baseline's state arrays.
    pub fn new(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        layout: &Layout,
        p: &Array,
        g: &Array,
        state: &BaselineArrays,
    ) -> Self {
        let entry = if state.vmax.is_some() {
            "copy_amsgrad"
        } else {
            "copy"
        };
        let pipeline = derived_pipeline(device, "bench copy", COPY_SHADER, entry);
        let bgl = pipeline.get_bind_group_layout(0);
        let spans = layout.arena_segments();
        let (info_buf, stride) = infos(device, queue, &spans);
        let max_dim = device.limits().max_compute_workgroups_per_dimension;
        let dispatches = spans
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut entries = vec![
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: info_binding(&info_buf, stride, i),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: p.bind(s),
                    },
                    wgpu::BindGroupEntry {
                        binding: 2,
                        resource: g.bind(s),
                    },
                    wgpu::BindGroupEntry {
                        binding: 3,
                        resource: state.m.bind(s),
                    },
                    wgpu::BindGroupEntry {
                        binding: 4,
                        resource: state.v.bind(s),
                    },
                ];
                if let Some(x) = &state.vmax {
                    entries.push(wgpu::BindGroupEntry {
                        binding: 5,
                        resource: x.bind(s),
                    });
                }
                Dispatch {
                    bind_group: device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some("bench copy"),
                        layout: &bgl,
                        entries: &entries,
                    }),
                    grid: grid(s.len, max_dim),
                }
            })
            .collect();
        Self {
            pipeline,
            dispatches,
            _infos: info_buf,
        }
    }

    /// Records one copy into `pass`.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        for d in &self.dispatches {
            d.record(pass);
        }
    }
}

/// The streams of a mixed-precision step, as its copy roofline moves them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MixedCopyKind {
    /// 16-bit parameters, gradients and moments: reads param, grad, exp_avg, exp_avg_sq and
    /// writes all but grad back, 2 bytes each: 14 B/param (`copy16`).
    Pure16,
    /// 16-bit parameters and gradients, f32 moments: param 2 + 2, grad 2, exp_avg 4 + 4,
    /// exp_avg_sq 4 + 4: 22 B/param (`copy_p16_s32`).
    F32Moments,
    /// 16-bit gradients, f32 master weights and moments, 16-bit parameters written only:
    /// grad 2, master 4 + 4, exp_avg 4 + 4, exp_avg_sq 4 + 4, param 2: 28 B/param
    /// (`copy_master`).
    Master,
}

impl MixedCopyKind {
    fn entry(self) -> &'static str {
        match self {
            MixedCopyKind::Pure16 => "copy16",
            MixedCopyKind::F32Moments => "copy_p16_s32",
            MixedCopyKind::Master => "copy_master",
        }
    }
}

/// The copy roofline of a mixed-precision step (`bench/shaders/copy_mixed.wgsl`): the bytes
/// the fused step reads and writes, each stream at its own element size, and nothing else.
/// One dispatch per binding-sized segment of the arenas.
pub struct MixedCopy {
    pipeline: wgpu::ComputePipeline,
    dispatches: Vec<Dispatch>,
    _infos: wgpu::Buffer,
}

impl MixedCopy {
    /// Builds the copy of `kind` for a workload laid out as `layout` (in elements): `p` and
    /// `g` hold 16-bit elements (arrays of [`Layout::halved`]); `m` and `v` hold 16-bit
    /// elements for [`MixedCopyKind::Pure16`], else f32 (arrays of `layout`), as `master`
    /// (needed by [`MixedCopyKind::Master`] only).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        layout: &Layout,
        kind: MixedCopyKind,
        p: &Array,
        g: &Array,
        m: &Array,
        v: &Array,
        master: Option<&Array>,
    ) -> Result<Self> {
        let pipeline =
            derived_pipeline(device, "bench copy mixed", COPY_MIXED_SHADER, kind.entry());
        let bgl = pipeline.get_bind_group_layout(0);
        let spans = layout.arena_segments();
        // Vectors per dispatch: vec4<u32> of eight 16-bit elements for `copy16`, else one
        // per four elements (a vec2<u32> of 16-bit values beside a vec4 of f32 ones).
        let per_vector = if kind == MixedCopyKind::Pure16 { 8 } else { 4 };
        let vectors: Vec<u64> = spans.iter().map(|s| s.len.div_ceil(per_vector)).collect();
        let (info_buf, stride) = infos_of(device, queue, &vectors);
        let max_dim = device.limits().max_compute_workgroups_per_dimension;
        let mut dispatches = Vec::with_capacity(spans.len());
        for (i, s) in spans.iter().enumerate() {
            // (binding, array, bytes per element)
            let mut streams: Vec<(u32, &Array, u64)> = match kind {
                MixedCopyKind::Pure16 => vec![(1, p, 2), (2, g, 2), (3, m, 2), (4, v, 2)],
                MixedCopyKind::F32Moments | MixedCopyKind::Master => {
                    vec![(5, p, 2), (6, g, 2), (7, m, 4), (8, v, 4)]
                }
            };
            if kind == MixedCopyKind::Master {
                let master = master.context("the master-weights copy needs master")?;
                streams.push((9, master, 4));
            }
            let entries: Vec<wgpu::BindGroupEntry<'_>> = std::iter::once(wgpu::BindGroupEntry {
                binding: 0,
                resource: info_binding(&info_buf, stride, i),
            })
            .chain(
                streams
                    .iter()
                    .map(|&(binding, a, bytes)| wgpu::BindGroupEntry {
                        binding,
                        resource: a.bind_elems(s, bytes),
                    }),
            )
            .collect();
            dispatches.push(Dispatch {
                bind_group: device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("bench copy mixed"),
                    layout: &bgl,
                    entries: &entries,
                }),
                grid: grid_vectors(vectors[i], max_dim),
            });
        }
        Ok(Self {
            pipeline,
            dispatches,
            _infos: info_buf,
        })
    }

    /// Records one copy into `pass`.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        for d in &self.dispatches {
            d.record(pass);
        }
    }
}

/// The unfused step's scalars, computed on the host every step.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Scalars {
    decay: f32,
    lerp_weight: f32,
    beta2: f32,
    one_minus_beta2: f32,
    bc2_sqrt: f32,
    eps: f32,
    neg_step_size: f32,
    _pad: f32,
}

/// The hyperparameters of every run: PyTorch's defaults and the script's lr and schedule
/// (`CosineAnnealingLR(T_max=1000)`).
#[derive(Clone, Copy, Debug)]
pub struct Hyper {
    /// Base learning rate.
    pub lr: f64,
    /// Adam's betas.
    pub betas: (f64, f64),
    /// eps.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// `T_max` of the cosine schedule.
    pub t_max: u32,
}

impl Default for Hyper {
    fn default() -> Self {
        // PyTorch's defaults, as the crate's config holds them.
        let d = wgpu_adamw::AdamWConfig::default();
        Self {
            lr: d.lr,
            betas: d.betas,
            eps: d.eps,
            weight_decay: d.weight_decay,
            t_max: 1000,
        }
    }
}

/// The unfused baseline: per tensor, one dispatch per elementwise operation.
pub struct Unfused {
    pipelines: Vec<wgpu::ComputePipeline>,
    dispatches: Vec<Dispatch>,
    scalars: wgpu::Buffer,
    queue: wgpu::Queue,
    hyper: Hyper,
    steps: u32,
    _infos: wgpu::Buffer,
}

impl Unfused {
    /// Builds the baseline over `p`, `g` and its own state arrays.
    pub fn new(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        layout: &Layout,
        p: &Array,
        g: &Array,
        state: &BaselineArrays,
        hyper: Hyper,
    ) -> Self {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("bench unfused"),
            source: wgpu::ShaderSource::Wgsl(UNFUSED_SHADER.into()),
        });
        let entry = |binding: u32, ty: wgpu::BufferBindingType| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let rw = wgpu::BufferBindingType::Storage { read_only: false };
        let bgl = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("bench unfused"),
            entries: &[
                entry(0, wgpu::BufferBindingType::Uniform),
                entry(1, wgpu::BufferBindingType::Uniform),
                entry(2, rw),
                entry(3, wgpu::BufferBindingType::Storage { read_only: true }),
                entry(4, rw),
                entry(5, rw),
                entry(6, rw),
                entry(7, rw),
            ],
        });
        let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("bench unfused"),
            bind_group_layouts: &[Some(&bgl)],
            immediate_size: 0,
        });
        let ops: &[&str] = if state.vmax.is_some() {
            &[
                "mul_param",
                "lerp_exp_avg",
                "mul_exp_avg_sq",
                "addcmul_exp_avg_sq",
                "maximum_max_exp_avg_sq",
                "sqrt_denom_amsgrad",
                "div_denom",
                "add_denom",
                "addcdiv_param",
            ]
        } else {
            &[
                "mul_param",
                "lerp_exp_avg",
                "mul_exp_avg_sq",
                "addcmul_exp_avg_sq",
                "sqrt_denom",
                "div_denom",
                "add_denom",
                "addcdiv_param",
            ]
        };
        let pipelines = ops
            .iter()
            .map(|op| {
                device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(op),
                    layout: Some(&pl),
                    module: &module,
                    entry_point: Some(op),
                    compilation_options: Default::default(),
                    cache: None,
                })
            })
            .collect();
        let scalars = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("bench unfused scalars"),
            size: std::mem::size_of::<Scalars>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("bench unused max_exp_avg_sq"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let spans = layout.tensor_pieces();
        let (info_buf, stride) = infos(device, queue, &spans);
        let max_dim = device.limits().max_compute_workgroups_per_dimension;
        let dispatches = spans
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let vmax = match &state.vmax {
                    Some(x) => x.bind(s),
                    None => dummy.as_entire_binding(),
                };
                let entries = [
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: scalars.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: info_binding(&info_buf, stride, i),
                    },
                    wgpu::BindGroupEntry {
                        binding: 2,
                        resource: p.bind(s),
                    },
                    wgpu::BindGroupEntry {
                        binding: 3,
                        resource: g.bind(s),
                    },
                    wgpu::BindGroupEntry {
                        binding: 4,
                        resource: state.m.bind(s),
                    },
                    wgpu::BindGroupEntry {
                        binding: 5,
                        resource: state.v.bind(s),
                    },
                    wgpu::BindGroupEntry {
                        binding: 6,
                        resource: state.denom.bind(s),
                    },
                    wgpu::BindGroupEntry {
                        binding: 7,
                        resource: vmax,
                    },
                ];
                Dispatch {
                    bind_group: device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some("bench unfused"),
                        layout: &bgl,
                        entries: &entries,
                    }),
                    grid: grid(s.len, max_dim),
                }
            })
            .collect();
        Self {
            pipelines,
            dispatches,
            scalars,
            queue: queue.clone(),
            hyper,
            steps: 0,
            _infos: info_buf,
        }
    }

    /// Computes this step's scalars on the host (as PyTorch's non-capturable path does) and
    /// queues their upload; the next submit carries them.
    pub fn upload_scalars(&mut self) {
        self.steps += 1;
        let h = self.hyper;
        let t = f64::from(self.steps);
        let epoch = f64::from(self.steps - 1);
        // CosineAnnealingLR's closed form with eta_min = 0.
        let lr = h.lr * (1.0 + (std::f64::consts::PI * epoch / f64::from(h.t_max)).cos()) / 2.0;
        let bc1 = 1.0 - h.betas.0.powf(t);
        let bc2 = 1.0 - h.betas.1.powf(t);
        let s = Scalars {
            decay: (1.0 - lr * h.weight_decay) as f32,
            lerp_weight: (1.0 - h.betas.0) as f32,
            beta2: h.betas.1 as f32,
            one_minus_beta2: (1.0 - h.betas.1) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
            eps: h.eps as f32,
            neg_step_size: (-lr / bc1) as f32,
            _pad: 0.0,
        };
        self.queue
            .write_buffer(&self.scalars, 0, bytemuck::bytes_of(&s));
    }

    /// Records one step into `pass`: tensor by tensor, one dispatch per operation, as
    /// PyTorch's single-tensor loop launches them.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        for d in &self.dispatches {
            for p in &self.pipelines {
                pass.set_pipeline(p);
                d.record(pass);
            }
        }
    }

    /// Dispatches per step.
    pub fn dispatches_per_step(&self) -> usize {
        self.dispatches.len() * self.pipelines.len()
    }
}

/// Times steps on one device, with timestamp queries where the device has them.
pub struct Timer {
    device: wgpu::Device,
    queue: wgpu::Queue,
    /// How steps are timed.
    pub timing: Timing,
    queries: Option<(wgpu::QuerySet, wgpu::Buffer, wgpu::Buffer)>,
}

/// A step recorder: begins one compute pass with the given timestamp writes and records a
/// step into it.
pub type Recorder<'a> =
    dyn FnMut(&mut wgpu::CommandEncoder, Option<wgpu::ComputePassTimestampWrites<'_>>) + 'a;

impl Timer {
    /// A timer for `device`; `force_wall` ignores timestamp queries.
    pub fn new(device: &wgpu::Device, queue: &wgpu::Queue, force_wall: bool) -> Self {
        let timestamps = !force_wall && device.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        let queries = timestamps.then(|| {
            let set = device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("bench timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            });
            let resolve = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("bench timestamps resolve"),
                size: 16,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let read = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("bench timestamps read"),
                size: 16,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            (set, resolve, read)
        });
        Self {
            device: device.clone(),
            queue: queue.clone(),
            timing: if queries.is_some() {
                Timing::Timestamp
            } else {
                Timing::Wall
            },
            queries,
        }
    }

    /// Waits until the device is idle.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .context("waiting for the device")?;
        Ok(())
    }

    /// Records `steps` steps with `record` into one encoder, submits them and returns the
    /// milliseconds they took (GPU time from the first pass's start to the last one's end, or
    /// wall time from submit to completion). `before` runs before each step is recorded.
    pub fn time(
        &self,
        steps: usize,
        before: &mut dyn FnMut(),
        record: &mut Recorder<'_>,
    ) -> Result<f64> {
        let mut encoder = self.device.create_command_encoder(&Default::default());
        for i in 0..steps {
            before();
            let ts = self
                .queries
                .as_ref()
                .map(|(set, _, _)| wgpu::ComputePassTimestampWrites {
                    query_set: set,
                    beginning_of_pass_write_index: (i == 0).then_some(0),
                    end_of_pass_write_index: (i + 1 == steps).then_some(1),
                })
                .filter(|t| {
                    t.beginning_of_pass_write_index.is_some() || t.end_of_pass_write_index.is_some()
                });
            record(&mut encoder, ts);
        }
        if let Some((set, resolve, read)) = &self.queries {
            encoder.resolve_query_set(set, 0..2, resolve, 0);
            encoder.copy_buffer_to_buffer(resolve, 0, read, 0, 16);
        }
        let t0 = Instant::now();
        self.queue.submit([encoder.finish()]);
        self.wait()?;
        let wall = t0.elapsed().as_secs_f64() * 1e3;
        let Some((_, _, read)) = &self.queries else {
            return Ok(wall);
        };
        let slice = read.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv()
            .context("timestamp read-back dropped")?
            .context("mapping the timestamps")?;
        let ticks: [u64; 2] = {
            let data = slice.get_mapped_range().context("reading the timestamps")?;
            bytemuck::pod_read_unaligned(&data[..16])
        };
        read.unmap();
        let period = f64::from(self.queue.get_timestamp_period());
        Ok(ticks[1].wrapping_sub(ticks[0]) as f64 * period / 1e6)
    }

    /// Microseconds of CPU time to record one step: `steps` steps recorded into one encoder
    /// and finished, divided by `steps`. Nothing is submitted.
    pub fn encode_us(&self, steps: usize, record: &mut Recorder<'_>) -> f64 {
        let t0 = Instant::now();
        let mut encoder = self.device.create_command_encoder(&Default::default());
        for _ in 0..steps {
            record(&mut encoder, None);
        }
        let cb = encoder.finish();
        let us = t0.elapsed().as_secs_f64() * 1e6 / steps as f64;
        drop(cb);
        us
    }
}

/// Checks that a workload fits the device before allocating it.
pub fn check_fits(w: &Workload, limits: &wgpu::Limits) -> Result<Layout> {
    Layout::new(&w.lens(), limits).with_context(|| format!("workload {}", w.name))
}
