//! The MLP on the GPU: forward, softmax cross-entropy and backward as WGSL kernels, the
//! parameters and gradients in one arena buffer each, updated by [`GpuAdamW`].

use crate::data::Dataset;
use crate::model::Mlp;
use anyhow::{bail, Context};
use wgpu_adamw::wgpu;
use wgpu_adamw::{
    read_buffer, AdamWConfig, CpuAdamW, CpuParamGroup, GpuAdamW, GroupConfig, ParamGroup,
    TensorBinding,
};

const COMMON: &str = include_str!("../shaders/common.wgsl");
const FORWARD: &str = include_str!("../shaders/forward.wgsl");
const LOSS: &str = include_str!("../shaders/loss.wgsl");
const BACKWARD: &str = include_str!("../shaders/backward.wgsl");

/// Bytes of one record of [`GpuMlp::encode_lr`]: the step scalars of the two param groups
/// (8 f32 each, the lr first).
pub const LR_RECORD_BYTES: u64 = 2 * 32;

/// Threads per workgroup (`WG` in `shaders/common.wgsl`).
const WG: u32 = 64;

/// The `Cfg` uniform of `shaders/common.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Cfg {
    a_off: u32,
    d_off: u32,
    dst_off: u32,
    n_threads: u32,
    in_dim: u32,
    out_dim: u32,
    batch: u32,
    relu: u32,
    w_off: u32,
    b_off: u32,
    aux_off: u32,
    grid_x: u32,
    _pad: [u32; 4],
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Forward,
    ForwardTiled,
    Xent,
    Reduce,
    GradParams,
    GradParamsTiled,
    GradInput,
    GradInputTiled,
}

#[derive(Debug)]
struct Op {
    kind: Kind,
    bind_group: wgpu::BindGroup,
    grid: (u32, u32),
}

#[derive(Debug)]
struct Pipelines {
    forward: wgpu::ComputePipeline,
    forward_tiled: wgpu::ComputePipeline,
    xent: wgpu::ComputePipeline,
    reduce: wgpu::ComputePipeline,
    grad_params: wgpu::ComputePipeline,
    grad_params_tiled: wgpu::ComputePipeline,
    grad_input: wgpu::ComputePipeline,
    grad_input_tiled: wgpu::ComputePipeline,
}

impl Pipelines {
    fn get(&self, kind: Kind) -> &wgpu::ComputePipeline {
        match kind {
            Kind::Forward => &self.forward,
            Kind::ForwardTiled => &self.forward_tiled,
            Kind::Xent => &self.xent,
            Kind::Reduce => &self.reduce,
            Kind::GradParams => &self.grad_params,
            Kind::GradParamsTiled => &self.grad_params_tiled,
            Kind::GradInput => &self.grad_input,
            Kind::GradInputTiled => &self.grad_input_tiled,
        }
    }
}

/// Offsets (in f32 elements) of everything in the activations buffer.
#[derive(Clone, Copy, Debug)]
struct ActLayout {
    /// Layer inputs: `x`, `a1`, `a2`, then the logits `z3`.
    act: [u32; 4],
    /// Deltas w.r.t. each layer's pre-activation output: `d1`, `d2`, `d3`.
    delta: [u32; 3],
    /// Per-sample losses, then hits.
    aux: u32,
    total: u32,
}

impl ActLayout {
    fn new(mlp: &Mlp, n: usize) -> Self {
        let dims = [mlp.inputs, mlp.hidden[0], mlp.hidden[1], mlp.classes];
        let mut at = 0usize;
        // Every region starts at a multiple of 4 elements, for the vec4 views.
        let mut take = |len: usize| {
            let o = at as u32;
            at += len.div_ceil(4) * 4;
            o
        };
        let act = dims.map(|d| take(n * d));
        let delta = [take(n * dims[1]), take(n * dims[2]), take(n * dims[3])];
        let aux = take(2 * n);
        Self {
            act,
            delta,
            aux,
            total: at as u32,
        }
    }
}

/// The dispatches of a forward (and backward) pass over `n` samples, with the buffers they
/// own: activations (the inputs first), labels and the `[loss, accuracy]` stats.
#[derive(Debug)]
struct OpSet {
    ops: Vec<Op>,
    /// The first `n_forward` ops are the forward pass and the loss.
    n_forward: usize,
    acts: wgpu::Buffer,
    labels: wgpu::Buffer,
    stats: wgpu::Buffer,
    n: usize,
}

/// A minibatch trainer of [`Mlp`] on the GPU. One training step is a copy of the step's
/// minibatch into the inputs, one compute pass of ten dispatches (3 forward, loss, loss
/// reduction, 5 backward) and the optimizer's pass (its prologue and one update dispatch
/// for the whole model); nothing is read back. Evaluation sets (held-out data, the whole
/// training set) have forward passes of their own over the same parameters.
#[derive(Debug)]
pub struct GpuMlp {
    device: wgpu::Device,
    queue: wgpu::Queue,
    mlp: Mlp,
    /// The parameter arena (layout of [`Mlp::layers`]).
    pub params: wgpu::Buffer,
    /// The gradient arena (same layout), overwritten by every backward pass.
    pub grads: wgpu::Buffer,
    pipelines: Pipelines,
    train: OpSet,
    evals: Vec<OpSet>,
    /// The minibatches of a run, step after step: inputs and labels.
    batches: Option<(wgpu::Buffer, wgpu::Buffer, u32)>,
    opt: GpuAdamW,
    /// The optimizer's state at creation (zero moments, counters 0): restores it per run.
    fresh: wgpu_adamw::OptimizerState,
}

fn layout_entry(binding: u32, ty: wgpu::BufferBindingType) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty,
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

fn storage_buffer(
    device: &wgpu::Device,
    label: &str,
    size: u64,
    extra: wgpu::BufferUsages,
) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: size.max(16),
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC
            | extra,
        mapped_at_creation: false,
    })
}

impl GpuMlp {
    /// Builds the model on `device`: a trainer on minibatches of `batch` samples (see
    /// [`GpuMlp::upload_batches`]) and a forward pass over each of `eval_sets`, starting
    /// from the parameter arena `init`, updated by AdamW with `config`.
    pub fn new(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        mlp: Mlp,
        batch: usize,
        eval_sets: &[&Dataset],
        init: &[f32],
        config: AdamWConfig,
    ) -> anyhow::Result<Self> {
        if init.len() != mlp.arena_len() {
            bail!(
                "parameter arena has {} elements, the model needs {}",
                init.len(),
                mlp.arena_len()
            );
        }
        if batch == 0 {
            bail!("the batch size must be >= 1");
        }
        for data in eval_sets {
            if data.classes != mlp.classes || data.features() != mlp.inputs {
                bail!("the data set does not match the model's inputs and classes");
            }
        }
        #[cfg(not(target_arch = "wasm32"))]
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let params = storage_buffer(
            device,
            "demo params",
            4 * init.len() as u64,
            wgpu::BufferUsages::empty(),
        );
        queue.write_buffer(&params, 0, bytemuck::cast_slice(init));
        let grads = storage_buffer(
            device,
            "demo grads",
            4 * init.len() as u64,
            wgpu::BufferUsages::empty(),
        );

        use wgpu::BufferBindingType as T;
        let bgl = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("demo mlp"),
            entries: &[
                layout_entry(0, T::Uniform),
                layout_entry(1, T::Storage { read_only: true }),
                layout_entry(2, T::Storage { read_only: false }),
                layout_entry(4, T::Storage { read_only: true }),
                layout_entry(5, T::Storage { read_only: false }),
                layout_entry(6, T::Storage { read_only: true }),
                layout_entry(7, T::Storage { read_only: false }),
            ],
        });
        let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("demo mlp"),
            bind_group_layouts: &[Some(&bgl)],
            immediate_size: 0,
        });
        let module = |label: &str, body: &str| {
            device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(format!("{COMMON}\n{body}").into()),
            })
        };
        let (fwd, loss, bwd) = (
            module("forward.wgsl", FORWARD),
            module("loss.wgsl", LOSS),
            module("backward.wgsl", BACKWARD),
        );
        let pipeline = |m: &wgpu::ShaderModule, entry: &str| {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: Some(&pl),
                module: m,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            })
        };
        let pipelines = Pipelines {
            forward: pipeline(&fwd, "linear_forward"),
            forward_tiled: pipeline(&fwd, "linear_forward_tiled"),
            xent: pipeline(&loss, "softmax_xent"),
            reduce: pipeline(&loss, "reduce_loss"),
            grad_params: pipeline(&bwd, "linear_grad_params"),
            grad_params_tiled: pipeline(&bwd, "linear_grad_params_tiled"),
            grad_input: pipeline(&bwd, "linear_grad_input"),
            grad_input_tiled: pipeline(&bwd, "linear_grad_input_tiled"),
        };
        let train = op_set(device, queue, &bgl, &mlp, &params, &grads, batch, true)?;
        let mut evals = Vec::new();
        for data in eval_sets {
            let set = op_set(
                device,
                queue,
                &bgl,
                &mlp,
                &params,
                &grads,
                data.len(),
                false,
            )?;
            queue.write_buffer(&set.acts, 0, bytemuck::cast_slice(&data.x));
            queue.write_buffer(&set.labels, 0, bytemuck::cast_slice(&data.y));
            evals.push(set);
        }

        let [weights, biases] = mlp.tensors();
        let bind = |&(off, len): &(usize, usize)| TensorBinding {
            param: params.clone(),
            param_offset: 4 * off as u64,
            grad: grads.clone(),
            grad_offset: 4 * off as u64,
            len: len as u64,
        };
        let bias_group = GroupConfig {
            weight_decay: Some(0.0),
            ..Default::default()
        };
        // The state `reset` returns to: a fresh CPU twin's, which a fresh GPU optimizer's
        // equals (no read-back, so nothing here blocks on the web).
        let lens = |t: &[(usize, usize)]| t.iter().map(|&(_, len)| len).collect();
        let fresh = CpuAdamW::new(
            config.clone(),
            vec![
                CpuParamGroup {
                    config: GroupConfig::default(),
                    lens: lens(&weights),
                },
                CpuParamGroup {
                    config: bias_group,
                    lens: lens(&biases),
                },
            ],
        )
        .context("creating the optimizer")?
        .state();
        let opt = GpuAdamW::new(
            device,
            queue,
            config,
            vec![
                ParamGroup {
                    config: GroupConfig::default(),
                    tensors: weights.iter().map(bind).collect(),
                },
                ParamGroup {
                    config: bias_group,
                    tensors: biases.iter().map(bind).collect(),
                },
            ],
        )
        .context("creating the optimizer")?;
        // On the web a scope's result arrives only after control returns to the browser:
        // errors go to the device's uncaptured-error handler there.
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(e) = pollster::block_on(scope.pop()) {
            bail!("device error while building the MLP: {e}");
        }
        Ok(Self {
            device: device.clone(),
            queue: queue.clone(),
            mlp,
            params,
            grads,
            pipelines,
            train,
            evals,
            batches: None,
            opt,
            fresh,
        })
    }

    /// Uploads the minibatches of a run: step `s` (0-based) trains on inputs
    /// `x[s * batch * 2..]` and labels `y[s * batch..]` (see [`crate::data::batch_indices`]).
    pub fn upload_batches(&mut self, x: &[f32], y: &[u32]) -> anyhow::Result<()> {
        let b = self.train.n;
        anyhow::ensure!(
            y.len().is_multiple_of(b) && !y.is_empty() && x.len() == 2 * y.len(),
            "{} labels and {} inputs are not whole batches of {b}",
            y.len(),
            x.len()
        );
        let bx = storage_buffer(
            &self.device,
            "demo batch inputs",
            4 * x.len() as u64,
            wgpu::BufferUsages::empty(),
        );
        let by = storage_buffer(
            &self.device,
            "demo batch labels",
            4 * y.len() as u64,
            wgpu::BufferUsages::empty(),
        );
        self.queue.write_buffer(&bx, 0, bytemuck::cast_slice(x));
        self.queue.write_buffer(&by, 0, bytemuck::cast_slice(y));
        self.batches = Some((bx, by, (y.len() / b) as u32));
        Ok(())
    }

    /// Restarts training from the parameter arena `init` with the optimizer as it was
    /// created (zero moments, step 0, the schedule at its start).
    pub fn reset(&self, init: &[f32]) -> anyhow::Result<()> {
        anyhow::ensure!(init.len() == self.mlp.arena_len(), "parameter arena length");
        self.queue
            .write_buffer(&self.params, 0, bytemuck::cast_slice(init));
        self.opt.load_state(&self.fresh)?;
        Ok(())
    }

    /// Records the copy of minibatch `step` (0-based, of [`GpuMlp::upload_batches`]) into the
    /// trainer's inputs.
    fn encode_batch(&self, encoder: &mut wgpu::CommandEncoder, step: u32) -> anyhow::Result<()> {
        let (bx, by, steps) = self
            .batches
            .as_ref()
            .context("no minibatches uploaded (GpuMlp::upload_batches)")?;
        anyhow::ensure!(step < *steps, "step {step} of {steps} uploaded batches");
        let b = self.train.n as u64;
        let s = u64::from(step);
        encoder.copy_buffer_to_buffer(bx, s * 8 * b, &self.train.acts, 0, 8 * b);
        encoder.copy_buffer_to_buffer(by, s * 4 * b, &self.train.labels, 0, 4 * b);
        Ok(())
    }

    /// The model.
    pub fn mlp(&self) -> &Mlp {
        &self.mlp
    }

    /// The optimizer updating [`GpuMlp::params`].
    pub fn optimizer(&self) -> &GpuAdamW {
        &self.opt
    }

    /// Samples per minibatch.
    pub fn batch(&self) -> usize {
        self.train.n
    }

    /// Bytes of one record of [`GpuMlp::encode_log`]: `[loss, accuracy, 0, 0]` of the last
    /// training minibatch, the same of each evaluation set's last forward pass, then the
    /// optimizer's last step scalars (8 f32 per group, the lr first: see
    /// `GpuAdamW::encode_copy_step_scalars`) of the two param groups (weights, biases).
    pub fn log_record_bytes(&self) -> u64 {
        16 * (1 + self.evals.len() as u64) + LR_RECORD_BYTES
    }

    fn encode_ops(&self, encoder: &mut wgpu::CommandEncoder, ops: &[Op]) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("demo mlp"),
            timestamp_writes: None,
        });
        for op in ops {
            pass.set_pipeline(self.pipelines.get(op.kind));
            pass.set_bind_group(0, &op.bind_group, &[]);
            pass.dispatch_workgroups(op.grid.0, op.grid.1, 1);
        }
    }

    /// Records minibatch `step`'s forward, loss and backward: fills [`GpuMlp::grads`].
    pub fn encode_forward_backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        step: u32,
    ) -> anyhow::Result<()> {
        self.encode_batch(encoder, step)?;
        self.encode_ops(encoder, &self.train.ops);
        Ok(())
    }

    /// Records training step `step` (0-based): its minibatch's forward, loss and backward,
    /// then the optimizer's update.
    pub fn encode_train_step(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        step: u32,
    ) -> anyhow::Result<()> {
        self.encode_forward_backward(encoder, step)?;
        self.opt.encode_step(encoder);
        Ok(())
    }

    /// Records the forward pass and loss over evaluation set `set` (its stats buffer).
    pub fn encode_eval(&self, encoder: &mut wgpu::CommandEncoder, set: usize) {
        let ops = &self.evals[set];
        self.encode_ops(encoder, &ops.ops[..ops.n_forward]);
    }

    /// Records a copy of the last stats and step scalars into `dst` at `offset`
    /// ([`GpuMlp::log_record_bytes`] bytes; `dst` needs `COPY_DST`).
    pub fn encode_log(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        dst: &wgpu::Buffer,
        offset: u64,
    ) -> anyhow::Result<()> {
        for (k, set) in std::iter::once(&self.train).chain(&self.evals).enumerate() {
            encoder.copy_buffer_to_buffer(&set.stats, 0, dst, offset + 16 * k as u64, 16);
        }
        let at = offset + 16 * (1 + self.evals.len() as u64);
        self.opt.encode_copy_step_scalars(encoder, dst, at)?;
        Ok(())
    }

    /// Submits `encoder`'s work.
    pub fn submit(&self, encoder: wgpu::CommandEncoder) {
        self.queue.submit([encoder.finish()]);
    }

    fn read_f32(&self, buffer: &wgpu::Buffer, offset: u64, bytes: u64) -> anyhow::Result<Vec<f32>> {
        let words = read_buffer(&self.device, &self.queue, buffer, offset, bytes)?;
        Ok(bytemuck::cast_slice(&words).to_vec())
    }

    /// Reads back the parameter arena (waits for the queue).
    pub fn read_params(&self) -> anyhow::Result<Vec<f32>> {
        self.read_f32(&self.params, 0, 4 * self.mlp.arena_len() as u64)
    }

    /// Reads back the gradient arena of the last backward pass.
    pub fn read_grads(&self) -> anyhow::Result<Vec<f32>> {
        self.read_f32(&self.grads, 0, 4 * self.mlp.arena_len() as u64)
    }

    /// Reads back `(loss, accuracy)` of the last training minibatch.
    pub fn read_stats(&self) -> anyhow::Result<(f32, f32)> {
        let s = self.read_f32(&self.train.stats, 0, 8)?;
        Ok((s[0], s[1]))
    }

    /// Reads back `bytes` of a buffer written by [`GpuMlp::encode_log`].
    pub fn read_log(
        &self,
        log: &wgpu::Buffer,
        offset: u64,
        bytes: u64,
    ) -> anyhow::Result<Vec<f32>> {
        self.read_f32(log, offset, bytes)
    }

    /// The device and queue the model lives on (for reading its logs without blocking,
    /// with `wgpu_adamw::read_buffer_async`).
    pub fn device(&self) -> (&wgpu::Device, &wgpu::Queue) {
        (&self.device, &self.queue)
    }

    /// Evaluates the current parameters on evaluation set `set`: `(loss, accuracy)`.
    pub fn evaluate(&self, set: usize) -> anyhow::Result<(f32, f32)> {
        let mut encoder = self.device.create_command_encoder(&Default::default());
        self.encode_eval(&mut encoder, set);
        self.submit(encoder);
        let s = self.read_f32(&self.evals[set].stats, 0, 8)?;
        Ok((s[0], s[1]))
    }

    /// Creates a buffer for `records` log records.
    pub fn create_log_buffer(&self, records: usize) -> wgpu::Buffer {
        let bytes = self.log_record_bytes();
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("demo log"),
            size: (bytes * records as u64).max(bytes),
            usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    }

    /// Creates a buffer for the step scalars of `steps` steps ([`LR_RECORD_BYTES`] each).
    pub fn create_lr_buffer(&self, steps: u32) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("demo lr log"),
            size: (LR_RECORD_BYTES * u64::from(steps)).max(LR_RECORD_BYTES),
            usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    }

    /// Records a copy of the last step's scalars into record `index` of `dst` (a buffer of
    /// [`GpuMlp::create_lr_buffer`]): the lr the device used, every step, with no read-back.
    pub fn encode_lr(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        dst: &wgpu::Buffer,
        index: u32,
    ) -> anyhow::Result<()> {
        self.opt
            .encode_copy_step_scalars(encoder, dst, LR_RECORD_BYTES * u64::from(index))?;
        Ok(())
    }

    /// A new command encoder on this model's device.
    pub fn encoder(&self) -> wgpu::CommandEncoder {
        self.device.create_command_encoder(&Default::default())
    }
}

/// The dispatches of a pass over `n` samples (forward and loss; with `backward` also the
/// backward pass), with their own activations, labels and stats.
#[allow(clippy::too_many_arguments)]
fn op_set(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    bgl: &wgpu::BindGroupLayout,
    mlp: &Mlp,
    params: &wgpu::Buffer,
    grads: &wgpu::Buffer,
    n: usize,
    backward: bool,
) -> anyhow::Result<OpSet> {
    let lay = ActLayout::new(mlp, n);
    let limits = device.limits();
    if u64::from(lay.total) * 4 > limits.max_storage_buffer_binding_size {
        bail!("{n} samples do not fit one storage binding on this device");
    }
    let acts = storage_buffer(
        device,
        "demo activations",
        // Whole vec4s: the shaders see the activations only as vec4s.
        (4 * u64::from(lay.total)).div_ceil(16) * 16,
        wgpu::BufferUsages::empty(),
    );
    let labels = storage_buffer(
        device,
        "demo labels",
        4 * n as u64,
        wgpu::BufferUsages::empty(),
    );
    let stats = storage_buffer(device, "demo stats", 16, wgpu::BufferUsages::empty());
    let layers = mlp.layers();
    let nb = n as u32;
    let mut cfgs: Vec<(Kind, Cfg)> = Vec::new();
    // The tiled kernels need both dimensions to be multiples of 4 (offsets are).
    let tiled = |l: &crate::model::Layer| l.in_dim.is_multiple_of(4) && l.out_dim.is_multiple_of(4);
    let quads = |n: usize| n.div_ceil(4) as u32;
    for (l, layer) in layers.iter().enumerate() {
        let (kind, n_threads) = if tiled(layer) {
            (Kind::ForwardTiled, quads(n) * quads(layer.out_dim))
        } else {
            (Kind::Forward, nb * layer.out_dim as u32)
        };
        cfgs.push((
            kind,
            Cfg {
                a_off: lay.act[l],
                dst_off: lay.act[l + 1],
                n_threads,
                relu: u32::from(layer.relu),
                ..layer_cfg(layer, nb)
            },
        ));
    }
    let xent = Cfg {
        a_off: lay.act[3],
        d_off: lay.delta[2],
        aux_off: lay.aux,
        n_threads: nb,
        ..layer_cfg(&layers[2], nb)
    };
    cfgs.push((Kind::Xent, xent));
    cfgs.push((
        Kind::Reduce,
        Cfg {
            n_threads: 256,
            ..xent
        },
    ));
    let n_forward = cfgs.len();
    for (l, layer) in layers.iter().enumerate().rev().filter(|_| backward) {
        let (i, o) = (layer.in_dim as u32, layer.out_dim as u32);
        let (kind, n_threads) = if tiled(layer) {
            (
                Kind::GradParamsTiled,
                quads(layer.out_dim) * quads(layer.in_dim),
            )
        } else {
            (Kind::GradParams, o * i + o)
        };
        cfgs.push((
            kind,
            Cfg {
                a_off: lay.act[l],
                d_off: lay.delta[l],
                n_threads,
                ..layer_cfg(layer, nb)
            },
        ));
        if l > 0 {
            let (kind, n_threads) = if tiled(layer) {
                (Kind::GradInputTiled, quads(n) * quads(layer.in_dim))
            } else {
                (Kind::GradInput, nb * i)
            };
            cfgs.push((
                kind,
                Cfg {
                    a_off: lay.act[l],
                    d_off: lay.delta[l],
                    dst_off: lay.delta[l - 1],
                    n_threads,
                    // The input is the previous layer's ReLU output.
                    relu: u32::from(layers[l - 1].relu),
                    ..layer_cfg(layer, nb)
                },
            ));
        }
    }
    let ualign = u64::from(limits.min_uniform_buffer_offset_alignment).max(256);
    let cfg_size = std::mem::size_of::<Cfg>() as u64;
    let uniform = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("demo cfg"),
        size: ualign * cfgs.len() as u64,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let max_dim = limits.max_compute_workgroups_per_dimension.max(1);
    let mut ops = Vec::new();
    for (k, (kind, mut cfg)) in cfgs.into_iter().enumerate() {
        let (grid_x, grid_y) = if matches!(kind, Kind::Reduce) {
            (1, 1)
        } else {
            let groups = cfg.n_threads.div_ceil(WG).max(1);
            let x = groups.min(max_dim);
            (x, groups.div_ceil(x))
        };
        if grid_x > max_dim || grid_y > max_dim {
            bail!("{} threads exceed the dispatch grid", cfg.n_threads);
        }
        cfg.grid_x = grid_x;
        let at = ualign * k as u64;
        queue.write_buffer(&uniform, at, bytemuck::bytes_of(&cfg));
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("demo mlp op"),
            layout: bgl,
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &uniform,
                        offset: at,
                        size: wgpu::BufferSize::new(cfg_size),
                    }),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: buffer(params),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: buffer(grads),
                },
                wgpu::BindGroupEntry {
                    binding: 4,
                    resource: buffer(&labels),
                },
                wgpu::BindGroupEntry {
                    binding: 5,
                    resource: buffer(&stats),
                },
                wgpu::BindGroupEntry {
                    binding: 6,
                    resource: buffer(params),
                },
                wgpu::BindGroupEntry {
                    binding: 7,
                    resource: buffer(&acts),
                },
            ],
        });
        ops.push(Op {
            kind,
            bind_group,
            grid: (grid_x, grid_y),
        });
    }
    Ok(OpSet {
        ops,
        n_forward,
        acts,
        labels,
        stats,
        n,
    })
}

fn buffer(b: &wgpu::Buffer) -> wgpu::BindingResource<'_> {
    b.as_entire_binding()
}

fn layer_cfg(layer: &crate::model::Layer, batch: u32) -> Cfg {
    Cfg {
        in_dim: layer.in_dim as u32,
        out_dim: layer.out_dim as u32,
        batch,
        w_off: layer.w_off as u32,
        b_off: layer.b_off as u32,
        ..Default::default()
    }
}
