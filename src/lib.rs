//! # wgpu-adamw
//!
//! AdamW fused with a learning-rate schedule (every `torch.optim.lr_scheduler` scheduler and
//! the Hugging Face recipes, see [`schedule`]) as one WGSL compute kernel, driven through
//! [`wgpu`]. Hand it the parameter and gradient buffers your engine already owns; every step's update, learning rate included, then runs on the GPU
//! with no host computation and no read-back.
//!
//! ```no_run
//! use wgpu_adamw::{AdamWConfig, GpuAdamW, ParamGroup, Schedule, TensorBinding};
//! # fn demo(device: &wgpu::Device, queue: &wgpu::Queue,
//! #         params: &wgpu::Buffer, grads: &wgpu::Buffer) -> wgpu_adamw::Result<()> {
//! let config = AdamWConfig::default()
//!     .with_lr(3e-4)
//!     .with_schedule(Schedule::cosine(10_000, 1e-5));
//! // Two tensors living in the engine's arena buffers.
//! let tensors = vec![
//!     TensorBinding { param: params.clone(), param_offset: 0,
//!                     grad: grads.clone(), grad_offset: 0, len: 4096 },
//!     TensorBinding { param: params.clone(), param_offset: 4096 * 4,
//!                     grad: grads.clone(), grad_offset: 4096 * 4, len: 64 },
//! ];
//! let opt = GpuAdamW::new(device, queue, config, vec![ParamGroup { tensors, ..Default::default() }])?;
//! let mut encoder = device.create_command_encoder(&Default::default());
//! // ... the engine's forward and backward passes ...
//! opt.encode_step(&mut encoder);
//! queue.submit([encoder.finish()]);
//! # Ok(()) }
//! ```
//!
//! PyTorch (`torch.optim.AdamW` + `torch.optim.lr_scheduler`) defines every number: see
//! [`trace`] for the recorded traces both backends are tested against, [`CpuAdamW`] for the
//! CPU reference and [`schedule`] for the f64 closed forms.
//!
//! ## On the web
//! The crate builds for `wasm32-unknown-unknown` (wgpu's WebGPU backend) and fits WebGPU's
//! default limits. Nothing there may block: create with [`GpuContext::new_async`] and
//! [`GpuAdamW::new_async`], read back with the `_async` forms ([`GpuAdamW::state_async`],
//! [`GpuAdamW::checkpoint_bytes_async`], [`read_buffer_async`], ...); the blocking forms
//! return [`Error::Unsupported`] there. The `web/` directory of the repository runs the
//! traces, the benchmark and the demo in headless Chromium.
//!
//! ## Sharded (ZeRO-1)
//! [`GpuAdamW::shard`] updates one rank's range of the flattened parameters and keeps state
//! for it only; with clipping or loss scaling the engine all-gathers the ranks' 16-byte norm
//! entries between [`GpuAdamW::encode_partials`] and [`GpuAdamW::encode_apply`]. The result is
//! bit-identical to one process ([`CpuAdamW::set_norm_shards`]); see [`shard`] for the rule,
//! per-shard checkpoints and re-sharding. `integrations/mpi` runs it across processes.
//!
//! ## Numerics
//! Everything that is constant across steps (`1 - beta`, `ln(beta)`, eps) is computed on the
//! host in f64. On the device, the bias corrections are `-expm1(t * ln(beta))`, the cosine
//! phase is reduced in integers, and sines, cosines and exponentials are our own polynomials:
//! the result does not depend on the precision of a driver's builtin transcendentals.

#![warn(missing_docs)]

pub mod config;
pub mod context;
pub mod cpu;
pub mod error;
pub mod gpu;
pub mod precision;
// The kernel's internals: public for the tests, the benchmark and the CLI, not part of the
// API an engine uses.
#[doc(hidden)]
pub mod kernel;
#[doc(hidden)]
pub mod plan;
#[doc(hidden)]
pub mod probe;
pub mod schedule;
pub mod shard;
pub mod state;
pub mod trace;
#[doc(hidden)]
pub mod twin;

pub use config::{AdamWConfig, GradNormOrder, GradScalerConfig, GroupConfig, Schedule};
pub use context::{list_adapters, GpuContext};
pub use cpu::{CpuAdamW, CpuParamGroup};
pub use error::{Error, Result};
pub use gpu::{
    read_buffer, read_buffer_async, F16Path, GpuAdamW, GpuOptions, GradBinding, ParamGroup,
    ShardExchange, TensorBinding,
};
pub use precision::{Dtype, Elems, ElemsMut, Precision, StateDtype};
pub use probe::{schedule_beta1_cpu, schedule_beta1_gpu, schedule_lrs_cpu, schedule_lrs_gpu};
pub use shard::{Piece, ShardLayout, ShardMeta};
pub use state::{OptimizerState, TensorState};
pub use twin::Counters;
/// The `wgpu` this crate is built against: use it to create the buffers you hand over.
pub use wgpu;
