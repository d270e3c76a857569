//! The CPU reference: a plain Rust f32 AdamW built from the kernel's CPU twin
//! ([`crate::twin`]), multi-threaded over large tensors.

use crate::config::{AdamWConfig, GroupConfig};
use crate::error::{Error, Result};
use crate::kernel::Globals;
use crate::state::{OptimizerState, TensorState};
use crate::twin::{self, Counters, StepScalars};

/// A param group of the CPU reference: overrides and the lengths of its tensors.
#[derive(Clone, Debug, Default)]
pub struct CpuParamGroup {
    /// Overrides of the optimizer's lr and weight decay.
    pub config: GroupConfig,
    /// Number of elements of each tensor of the group.
    pub lens: Vec<usize>,
}

/// AdamW + schedule on the CPU, with the same per-element formulas as the kernel.
#[derive(Clone, Debug)]
pub struct CpuAdamW {
    config: AdamWConfig,
    groups: Vec<GroupConfig>,
    globals: Globals,
    group_params: Vec<(f32, f32)>,
    tensors: Vec<TensorState>,
    counters: Counters,
    last: Vec<StepScalars>,
    threads: usize,
}

/// Elements below which a tensor is updated on the calling thread.
const PARALLEL_MIN: usize = 1 << 16;

impl CpuAdamW {
    /// Creates the optimizer for `groups` of tensors, all moments zero.
    pub fn new(config: AdamWConfig, groups: Vec<CpuParamGroup>) -> Result<Self> {
        config.validate()?;
        for g in &groups {
            g.config.validate()?;
        }
        let globals = Globals::new(&config, groups.len() as u32);
        let group_params = groups
            .iter()
            .map(|g| {
                let (lr, wd) = config.resolve(&g.config);
                (lr as f32, wd as f32)
            })
            .collect();
        let tensors = groups
            .iter()
            .enumerate()
            .flat_map(|(gi, g)| {
                g.lens.iter().map(move |&n| TensorState {
                    group: gi,
                    exp_avg: vec![0.0; n],
                    exp_avg_sq: vec![0.0; n],
                    max_exp_avg_sq: config.amsgrad.then(|| vec![0.0; n]),
                })
            })
            .collect();
        Ok(Self {
            config,
            groups: groups.iter().map(|g| g.config).collect(),
            globals,
            group_params,
            tensors,
            counters: Counters::default(),
            last: vec![StepScalars::default(); groups.len()],
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        })
    }

    /// Builds an optimizer from a saved state (config, groups and moments).
    pub fn from_state(state: &OptimizerState) -> Result<Self> {
        let mut groups: Vec<CpuParamGroup> = state
            .groups
            .iter()
            .map(|&config| CpuParamGroup {
                config,
                lens: Vec::new(),
            })
            .collect();
        // Tensors are registered group by group, so a state's tensor order is group order.
        for t in &state.tensors {
            groups
                .get_mut(t.group)
                .ok_or_else(|| Error::CheckpointMismatch(format!("no group {}", t.group)))?
                .lens
                .push(t.exp_avg.len());
        }
        let mut opt = Self::new(state.config, groups)?;
        opt.load_state(state)?;
        Ok(opt)
    }

    /// Sets the number of threads used for large tensors (default: available parallelism).
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
    }

    /// The kernel's uniform block this optimizer mirrors.
    pub fn globals(&self) -> &Globals {
        &self.globals
    }

    /// One optimizer step: `params[i]` and `grads[i]` belong to tensor `i` in registration
    /// order (group by group).
    pub fn step(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]]) -> Result<()> {
        if params.len() != self.tensors.len() || grads.len() != self.tensors.len() {
            return Err(Error::ShapeMismatch(format!(
                "{} tensors registered, got {} params and {} grads",
                self.tensors.len(),
                params.len(),
                grads.len()
            )));
        }
        for (i, ((p, g), t)) in params.iter().zip(grads).zip(&self.tensors).enumerate() {
            if p.len() != t.exp_avg.len() || g.len() != t.exp_avg.len() {
                return Err(Error::ShapeMismatch(format!(
                    "tensor {i}: {} elements registered, got {} params and {} grads",
                    t.exp_avg.len(),
                    p.len(),
                    g.len()
                )));
            }
        }
        self.last = twin::prologue(&self.globals, &self.group_params, &mut self.counters);
        let g = &self.globals;
        let threads = self.threads;
        for ((p, grad), t) in params.iter_mut().zip(grads).zip(&mut self.tensors) {
            let s = &self.last[t.group];
            let n = p.len();
            let vmax = t.max_exp_avg_sq.as_deref_mut();
            if threads > 1 && n >= PARALLEL_MIN {
                let per = n.div_ceil(threads).div_ceil(64) * 64;
                std::thread::scope(|scope| {
                    let mut vmax_chunks = vmax.map(|v| v.chunks_mut(per));
                    for (((pc, gc), mc), vc) in p
                        .chunks_mut(per)
                        .zip(grad.chunks(per))
                        .zip(t.exp_avg.chunks_mut(per))
                        .zip(t.exp_avg_sq.chunks_mut(per))
                    {
                        let xc = vmax_chunks.as_mut().and_then(Iterator::next);
                        scope.spawn(move || update_slice(g, s, pc, gc, mc, vc, xc));
                    }
                });
            } else {
                update_slice(g, s, p, grad, &mut t.exp_avg, &mut t.exp_avg_sq, vmax);
            }
        }
        Ok(())
    }

    /// The learning rate each group used at the last step.
    pub fn lr(&self) -> Vec<f32> {
        self.last.iter().map(|s| s.lr).collect()
    }

    /// The step counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// A copy of the whole state.
    pub fn state(&self) -> OptimizerState {
        OptimizerState {
            config: self.config,
            groups: self.groups.clone(),
            counters: self.counters,
            tensors: self.tensors.clone(),
        }
    }

    /// Restores a state; on a mismatch nothing is changed.
    pub fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        let shape: Vec<(usize, usize)> = self
            .tensors
            .iter()
            .map(|t| (t.group, t.exp_avg.len()))
            .collect();
        state.check_matches(&self.config, &self.groups, &shape)?;
        self.tensors = state.tensors.clone();
        self.counters = state.counters;
        Ok(())
    }

    /// Saves a checkpoint (the same format as the GPU optimizer's).
    pub fn save_checkpoint(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        self.state().save(path)
    }

    /// Loads a checkpoint saved by either backend.
    pub fn load_checkpoint(&mut self, path: impl AsRef<std::path::Path>) -> Result<()> {
        self.load_state(&OptimizerState::load(path)?)
    }
}

fn update_slice(
    g: &Globals,
    s: &StepScalars,
    p: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    vmax: Option<&mut [f32]>,
) {
    match vmax {
        Some(vmax) => {
            for ((((p, &gr), m), v), x) in p.iter_mut().zip(grad).zip(m).zip(v).zip(vmax) {
                twin::update_element(g, s, p, gr, m, v, Some(x));
            }
        }
        None => {
            for (((p, &gr), m), v) in p.iter_mut().zip(grad).zip(m).zip(v) {
                twin::update_element(g, s, p, gr, m, v, None);
            }
        }
    }
}
