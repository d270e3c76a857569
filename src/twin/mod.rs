//! The CPU twin of the kernel (`shaders/*.wgsl`), file for file: the same functions, in the
//! same order of f32 operations, so the two can be read side by side and compared element by
//! element.
//!
//! [`crate::CpuAdamW`] calls them for the schedule, the prologue and the gradient norm; its
//! vectorised per-element loop (`cpu.rs`) restates [`update_element`] and is tested bit for bit
//! against it. Tests compare these functions with the kernel (`tests/numerics.rs`, through the
//! device's `numerics_probe`) and with the f64 closed forms of [`crate::schedule`].

mod accumulate;
mod grad_norm;
mod numerics;
mod prologue;
mod schedule;
mod update;

pub use accumulate::*;
pub use grad_norm::*;
pub use numerics::*;
pub use prologue::*;
pub use schedule::*;
pub use update::*;
