//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in this crate, as a typed error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A hyperparameter or schedule parameter is out of its valid range.
    #[error("invalid hyperparameter `{name}`: {reason}")]
    InvalidHyperparameter {
        /// The parameter's name, as in PyTorch (`lr`, `betas`, `t_max`, ...).
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor registration is unusable (bad offset, range, usage or length).
    #[error("invalid tensor {tensor}: {reason}")]
    InvalidTensor {
        /// Index of the tensor in registration order.
        tensor: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The optimizer was given the wrong number or sizes of host slices.
    #[error("shape mismatch: {0}")]
    ShapeMismatch(String),
    /// The schedule JSON or the trace/checkpoint metadata could not be understood.
    #[error("invalid configuration JSON: {0}")]
    InvalidJson(String),
    /// No usable GPU adapter exists on this machine.
    #[error("no GPU adapter found ({0}); on Linux without a GPU install the software Vulkan adapter: `apt-get install -y mesa-vulkan-drivers libvulkan1`")]
    NoAdapter(String),
    /// The adapter refused to create a device.
    #[error("could not create a device: {0}")]
    RequestDevice(String),
    /// The device lacks a limit or capacity this optimizer needs.
    #[error("device limit: {0}")]
    DeviceLimit(String),
    /// wgpu reported a validation, out-of-memory or internal error.
    #[error("device error: {0}")]
    Device(String),
    /// Waiting for the device or mapping a buffer failed (for example a lost device).
    #[error("device readback failed: {0}")]
    Readback(String),
    /// A safetensors file (trace or checkpoint) is malformed or inconsistent.
    #[error("invalid file {path}: {reason}")]
    InvalidFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A checkpoint does not match this optimizer (other tensors, sizes or options).
    #[error("checkpoint does not match this optimizer: {0}")]
    CheckpointMismatch(String),
    /// An argument of a call is unusable (a buffer without the usage the call needs, a
    /// misaligned or out-of-bounds range); nothing was recorded or changed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A step counter is at its limit (2^32 - 1): no further step can be taken or recorded
    /// in a state without wrapping it.
    #[error("step limit: {0}")]
    StepLimit(String),
    /// A checkpoint could not be serialised.
    #[error("could not serialise the checkpoint: {0}")]
    Serialize(String),
    /// A trace uses a feature this build does not support.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Reading or writing a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn hyper(name: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidHyperparameter {
        name,
        reason: reason.into(),
    }
}
