//! The crate's error type.

/// Everything that can go wrong between Burn and the optimizer, as a typed error.
///
/// Nothing in this crate panics on bad input: a module that cannot be trained in place, a
/// missing gradient or a device that Burn cannot use is one of these variants.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The optimizer itself refused (bad hyperparameters, a device limit, a wgpu error, no
    /// adapter, ...).
    #[error(transparent)]
    Optimizer(#[from] wgpu_adamw::Error),
    /// Burn could not create or register its wgpu runtime.
    #[error(
        "Burn could not initialise its wgpu runtime: {0} (no adapter? on Linux without a GPU \
         install the software Vulkan adapter: `apt-get install -y mesa-vulkan-drivers libvulkan1`)"
    )]
    BurnInit(#[from] burn::tensor::wgpu::WgpuInitError),
    /// The shared device lacks features CubeCL (Burn's wgpu runtime) compiles its shaders
    /// for: CubeCL chooses them from the adapter, so the device must enable them.
    #[error(
        "the device lacks the adapter features {0} that CubeCL compiles for; create it with \
         `GpuContext::with_adapter_features()`"
    )]
    MissingFeatures(String),
    /// A parameter or gradient tensor cannot be bound in place (wrong backend, dtype,
    /// device or layout).
    #[error("parameter `{path}`: {reason}")]
    Tensor {
        /// The parameter's module path (e.g. `layers.0.weight`).
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A trainable parameter has no gradient in this step's `GradientsParams` (it did not
    /// take part in the loss), under [`crate::MissingGrad::Error`].
    #[error(
        "no gradient for parameter `{path}` (it did not take part in the loss); freeze it \
         (`set_require_grad(false)`) before creating the optimizer, or choose \
         `MissingGrad::Zero`"
    )]
    MissingGradient {
        /// The parameter's module path.
        path: String,
    },
    /// The module's trainable parameters are not those the optimizer was created for (other
    /// parameters, other allocations — a reloaded record, a `fork`, a `to_device` — or a
    /// parameter frozen or unfrozen since): the optimizer would update stale buffers.
    #[error("the module changed since the optimizer was created: {0}; create a new optimizer")]
    ModuleChanged(String),
    /// The module has no trainable float parameter.
    #[error(
        "the module has no trainable parameter (is it on an autodiff device, \
         `device.autodiff()`, with parameters that require gradients?)"
    )]
    NoParameters,
    /// An argument is unusable (a group index out of range, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// CubeCL's server failed (a lost device, a buffer a failed kernel never wrote, ...).
    #[error("Burn's wgpu runtime failed: {0}")]
    Server(String),
    /// wgpu reported a validation or out-of-memory error for the optimizer's submission.
    #[error("device error: {0}")]
    Device(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
