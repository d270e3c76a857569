//! # wgpu-adamw-burn
//!
//! Train [Burn](https://burn.dev) 0.22 models with [`wgpu_adamw`]: AdamW fused with a
//! learning-rate schedule (every `torch.optim.lr_scheduler` scheduler and the Hugging Face
//! recipes) as WGSL compute kernels, run on the wgpu device and queue Burn's wgpu runtime
//! (CubeCL) uses, updating the parameters **in place** in Burn's own buffers. Each step binds
//! the gradients where Burn's backward pass left them: nothing is copied, nothing computed on
//! the host, nothing read back.
//!
//! ```no_run
//! use burn::nn::{Linear, LinearConfig};
//! use burn::optim::GradientsParams;
//! use burn::prelude::*;
//! use wgpu_adamw::{AdamWConfig, Schedule};
//! use wgpu_adamw_burn::{BurnAdamW, SharedDevice};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Our device registered with Burn (or `SharedDevice::burn_owned()`: Burn's device).
//! let shared = SharedDevice::new()?;
//! let device = shared.device(); // a Burn device with autodiff
//! let model: Linear = LinearConfig::new(2, 1).init(device);
//! let config = AdamWConfig::default()
//!     .with_lr(1e-2)
//!     .with_schedule(Schedule::warmup_cosine(10, 100, 0.5));
//! let mut opt = BurnAdamW::new(&shared, &model, config)?;
//! let (x, y) = (Tensor::<2>::ones([16, 2], device), Tensor::<2>::zeros([16, 1], device));
//! for _ in 0..100 {
//!     let loss = (model.forward(x.clone()) - y.clone()).powi_scalar(2).mean();
//!     let grads = GradientsParams::from_grads(loss.backward(), &model);
//!     opt.step(&model, grads)?;
//! }
//! println!("lr at the last step: {}", opt.lr()?);
//! # Ok(()) }
//! ```
//!
//! ## Versions
//! A `wgpu::Buffer` of one wgpu major is not the type of another's: this crate pins
//! wgpu-adamw 0.1 ↔ wgpu 30 ↔ burn 0.22.1 ↔ cubecl 0.11.3 (Burn without its `fusion`
//! feature, whose tensors are not buffers until fused work runs).
//!
//! ## Ordering
//! Burn and the optimizer share one queue; [`BurnAdamW::step`] flushes Burn before it
//! submits, keeps the gradients' memory pinned until after its submit, and the parameters'
//! memory for its whole life. See [`BurnAdamW`].

#![warn(missing_docs)]

mod device;
mod error;
mod optim;

pub use device::SharedDevice;
pub use error::{Error, Result};
pub use optim::{BurnAdamW, MissingGrad, ParamInfo};
/// The optimizer crate this integration drives (configs, schedules, the CPU reference).
pub use wgpu_adamw;
