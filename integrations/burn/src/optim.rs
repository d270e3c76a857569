//! [`BurnAdamW`]: the fused AdamW + schedule step on a Burn module's own buffers.

use crate::device::SharedDevice;
use crate::error::{Error, Result};
use burn::backend::wgpu::CubeTensor;
use burn::backend::Cube;
use burn::cubecl::client::Client;
use burn::cubecl::wgpu::{AutoCompiler, WgpuResource, WgpuServer};
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Tensor};
use cubecl_runtime::memory_management::ManagedMemoryId;
use cubecl_runtime::storage::ManagedResource;
use std::collections::HashSet;
use wgpu_adamw::wgpu;
use wgpu_adamw::{
    AdamWConfig, Dtype, GpuAdamW, GradBinding, GroupConfig, ParamGroup, TensorBinding,
};

/// A held CubeCL allocation: while it lives, CubeCL never frees, reuses or moves it.
type Pinned = ManagedResource<WgpuResource>;

/// The device-side type of the CubeCL device a tensor lives on.
type CubeDevice = burn::backend::CubeDevice;

/// What [`BurnAdamW::step`] does for a registered parameter that has no gradient in the
/// step's `GradientsParams` (it did not take part in the loss).
///
/// The fused step updates every registered tensor at once, so it cannot skip one the way
/// Burn's and PyTorch's optimizers do (no update, no weight decay, moments untouched).
/// Parameters that are *frozen* (`require_grad` false) when the optimizer is created are
/// never registered and never touched; freeze a parameter you do not train.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MissingGrad {
    /// Fail the step with [`Error::MissingGradient`]; nothing is submitted or changed.
    #[default]
    Error,
    /// Use a gradient of zeros. This is *not* a skip: weight decay still shrinks the
    /// parameter, the moments decay and the parameter keeps moving along its first moment.
    Zero,
}

/// A trainable parameter as the optimizer registered it.
#[derive(Clone, Debug)]
pub struct ParamInfo {
    /// Burn's id of the parameter.
    pub id: ParamId,
    /// Its module path, fields joined by dots (e.g. `layers.0.weight`).
    pub path: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its number of elements.
    pub len: usize,
    /// The param group it belongs to (index into the groups given at creation).
    pub group: usize,
}

/// Where a parameter's elements live: the CubeCL allocation and the handle's offsets.
type AllocKey = (ManagedMemoryId, Option<u64>, Option<u64>);

fn alloc_key(t: &CubeTensor) -> AllocKey {
    (
        t.handle.memory.descriptor().id,
        t.handle.offset_start,
        t.handle.offset_end,
    )
}

/// One registered parameter: what it is, where it lives and the pin that keeps it there.
struct Registered {
    info: ParamInfo,
    key: AllocKey,
    _pin: Pinned,
}

/// AdamW fused with a learning-rate schedule ([`wgpu_adamw::GpuAdamW`]), updating a Burn
/// module's parameters **in place**, in the buffers Burn allocated for them, on the wgpu
/// queue Burn submits to.
///
/// ```no_run
/// # use burn::prelude::*;
/// # use burn::nn::{Linear, LinearConfig};
/// # use burn::optim::GradientsParams;
/// use wgpu_adamw::{AdamWConfig, Schedule};
/// use wgpu_adamw_burn::{BurnAdamW, SharedDevice};
/// # fn demo() -> wgpu_adamw_burn::Result<()> {
/// let shared = SharedDevice::new()?; // or SharedDevice::burn_owned()?
/// let device = shared.device();
/// let model: Linear = LinearConfig::new(4, 2).init(device);
/// let config = AdamWConfig::default().with_lr(1e-3).with_schedule(Schedule::cosine(1000, 0.0));
/// let mut opt = BurnAdamW::new(&shared, &model, config)?;
/// # let x = Tensor::<2>::zeros([8, 4], device);
/// for _ in 0..1000 {
///     let loss = model.forward(x.clone()).powi_scalar(2).mean();
///     let grads = GradientsParams::from_grads(loss.backward(), &model);
///     opt.step(&model, grads)?; // `model` now holds the new parameters
/// }
/// println!("lr {}", opt.lr()?);
/// # Ok(()) }
/// ```
///
/// # What it takes from the module
/// At creation, every float parameter that requires a gradient, in the module's visiting
/// order (frozen ones are left alone). Each must be a contiguous f32 tensor of the
/// [`SharedDevice`]'s Burn device. Their allocations are pinned for the optimizer's life.
///
/// # Ordering rules it enforces
/// Burn and the optimizer share one queue, and queue order is the only protection between
/// them. [`BurnAdamW::step`]:
/// 1. pins each gradient's allocation, then flushes Burn (`client.flush()`), so the forward
///    and backward passes that wrote the gradients are on the queue before the step;
/// 2. re-points the step at the gradients where they are (no copy) and submits it;
/// 3. releases the gradients only after that submit: Burn can reuse their memory only for
///    work it submits later, which the queue runs after the step;
/// 4. returns without waiting: Burn's next use of the parameters (the next forward pass, a
///    read-back) is queued after the step and sees the new values.
///
/// # Clones share parameters
/// A Burn module's `clone()` shares its parameter buffers: the clones see every update.
/// Copy the data (`Tensor::from_data(t.to_data(), ..)`) to keep a snapshot.
pub struct BurnAdamW {
    opt: GpuAdamW,
    /// In the module's visiting order.
    params: Vec<Registered>,
    /// Registration (optimizer) order → index in `params`.
    order: Vec<usize>,
    /// Registration order of each visited parameter (the inverse of `order`).
    slot: Vec<usize>,
    /// The registered parameters' ids.
    ids: HashSet<ParamId>,
    /// Zeros: the gradients bound at creation and those of [`MissingGrad::Zero`].
    zeros: wgpu::Buffer,
    missing: MissingGrad,
    client: Client,
    cube_device: CubeDevice,
    steps: u64,
}

impl std::fmt::Debug for BurnAdamW {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BurnAdamW")
            .field(
                "params",
                &self.params.iter().map(|p| &p.info).collect::<Vec<_>>(),
            )
            .field("missing", &self.missing)
            .field("steps", &self.steps)
            .finish_non_exhaustive()
    }
}

/// A trainable float parameter found by a module walk.
struct Found {
    id: ParamId,
    path: String,
    shape: Vec<usize>,
    tensor: Result<CubeTensor, String>,
}

/// Collects the module's trainable float parameters, in visiting order.
#[derive(Default)]
struct Collect {
    path: Vec<String>,
    found: Vec<Found>,
    seen: HashSet<ParamId>,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        // A parameter the module holds twice (tied weights) is one tensor.
        if !param.is_require_grad() || !self.seen.insert(param.id) {
            return;
        }
        let value = param.val();
        let shape = value.dims().to_vec();
        let tensor = value
            .inner()
            .try_into_primitive::<Cube>()
            .map_err(|e| format!("not a CubeCL tensor: {e:?}"));
        self.found.push(Found {
            id: param.id,
            path: self.path.join("."),
            shape,
            tensor,
        });
    }
}

/// The module walk of a step: checks each parameter against the registered one and takes
/// its gradient out of `grads`, flattened.
struct Gather<'a> {
    path: Vec<String>,
    grads: &'a mut GradientsParams,
    params: &'a [Registered],
    ids: &'a HashSet<ParamId>,
    seen: HashSet<ParamId>,
    next: usize,
    /// Each registered parameter's gradient (visiting order); `None` where it has none.
    out: Vec<Option<Tensor<1>>>,
    error: Option<Error>,
}

impl Gather<'_> {
    fn fail(&mut self, e: Error) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }
}

impl ModuleVisitor for Gather<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.error.is_some() {
            return;
        }
        let path = self.path.join(".");
        if !param.is_require_grad() {
            if self.ids.contains(&param.id) {
                self.fail(Error::ModuleChanged(format!(
                    "parameter `{path}` no longer requires a gradient"
                )));
            }
            return;
        }
        if !self.seen.insert(param.id) {
            return;
        }
        let Some(reg) = self.params.get(self.next) else {
            self.fail(Error::ModuleChanged(format!(
                "parameter `{path}` was not registered"
            )));
            return;
        };
        self.next += 1;
        if reg.info.id != param.id {
            self.fail(Error::ModuleChanged(format!(
                "found parameter `{path}` where `{}` was registered",
                reg.info.path
            )));
            return;
        }
        match param.val().inner().try_into_primitive::<Cube>() {
            Ok(t) if alloc_key(&t) == reg.key => {}
            _ => {
                self.fail(Error::ModuleChanged(format!(
                    "parameter `{path}` is no longer in the allocation the optimizer updates \
                     (a loaded record, `fork`, `to_device` or a mapped module?)"
                )));
                return;
            }
        }
        let grads = &mut *self.grads;
        let id = param.id;
        // `remove` panics if a gradient of another rank was registered under this id.
        let grad = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| grads.remove::<D>(id)));
        let grad = match grad {
            Ok(grad) => grad,
            Err(_) => {
                self.fail(Error::Tensor {
                    path,
                    reason: format!("its gradient is not a float tensor of rank {D}"),
                });
                return;
            }
        };
        let Some(grad) = grad else {
            self.out.push(None);
            return;
        };
        let dims = grad.dims();
        if dims.as_slice() != reg.info.shape.as_slice() {
            self.fail(Error::Tensor {
                path,
                reason: format!(
                    "gradient of shape {dims:?} for a parameter of shape {:?}",
                    reg.info.shape
                ),
            });
            return;
        }
        // Flat and contiguous: a no-op for the usual gradient, a copy for a strided or
        // storage-tiled one.
        self.out.push(Some(grad.inner().reshape([reg.info.len])));
    }
}

fn server_error(e: impl std::fmt::Debug) -> Error {
    Error::Server(format!("{e:?}"))
}

/// Checks that `t` is a contiguous f32 tensor of `device` with `len` elements, and pins its
/// allocation.
fn pin(t: &CubeTensor, device: &CubeDevice, len: usize) -> std::result::Result<Pinned, String> {
    if t.dtype != DType::F32 {
        return Err(format!(
            "dtype {:?}: only f32 tensors are supported",
            t.dtype
        ));
    }
    if &t.device != device {
        return Err(format!(
            "it lives on {:?}, not on the shared device {device:?}",
            t.device
        ));
    }
    if t.meta.is_tiled() || !t.is_contiguous() {
        return Err("it is not stored contiguously, so it cannot be bound in place".into());
    }
    let pinned = t
        .client
        .get_resource::<WgpuServer<AutoCompiler>>(t.handle.clone())
        .map_err(|e| format!("CubeCL gave no wgpu buffer for it: {e:?}"))?;
    let bytes = 4 * len as u64;
    let r = pinned.resource();
    if r.size < bytes {
        return Err(format!(
            "its binding holds {} bytes for {len} f32 elements",
            r.size
        ));
    }
    Ok(pinned)
}

impl BurnAdamW {
    /// The optimizer for every trainable float parameter of `module`, in one param group
    /// with `config`'s lr and weight decay. `module` must live on `shared`'s device.
    pub fn new<M: Module>(shared: &SharedDevice, module: &M, config: AdamWConfig) -> Result<Self> {
        Self::with_groups(shared, module, config, vec![GroupConfig::default()], |_| 0)
    }

    /// [`BurnAdamW::new`] with param groups: `assign` puts each parameter in one of
    /// `groups` (by index), say biases and norms in a group without weight decay:
    ///
    /// ```no_run
    /// # use wgpu_adamw::{AdamWConfig, GroupConfig};
    /// # use wgpu_adamw_burn::{BurnAdamW, SharedDevice};
    /// # fn demo(shared: &SharedDevice, model: &burn::nn::Linear) -> wgpu_adamw_burn::Result<()> {
    /// let no_decay = GroupConfig { weight_decay: Some(0.0), ..Default::default() };
    /// let opt = BurnAdamW::with_groups(
    ///     shared, model, AdamWConfig::default(),
    ///     vec![GroupConfig::default(), no_decay],
    ///     |p| usize::from(p.shape.len() == 1),
    /// )?;
    /// # Ok(()) }
    /// ```
    ///
    /// The optimizer's tensors (its state, [`CpuAdamW`](wgpu_adamw::CpuAdamW) twins) are in
    /// group order, and in the module's visiting order within a group: [`BurnAdamW::params`].
    pub fn with_groups<M: Module>(
        shared: &SharedDevice,
        module: &M,
        config: AdamWConfig,
        groups: Vec<GroupConfig>,
        mut assign: impl FnMut(&ParamInfo) -> usize,
    ) -> Result<Self> {
        let ctx = shared.context();
        let precision = config.precision;
        if precision.param != Dtype::F32 || precision.grad != Dtype::F32 {
            return Err(Error::InvalidArgument(format!(
                "precision {precision:?}: Burn's parameters and gradients are bound as f32 \
                 (16-bit moments are fine)"
            )));
        }
        // The client that flushes Burn's work and the CubeCL device the parameters must
        // be on, from a probe tensor of the shared device.
        let probe = Tensor::<1>::zeros([1], &shared.device().clone().inner())
            .try_into_primitive::<Cube>()
            .map_err(|e| {
                Error::InvalidArgument(format!("the shared device is not CubeCL's: {e:?}"))
            })?;
        let (client, cube_device) = (probe.client.clone(), probe.device.clone());
        drop(probe);

        let mut collect = Collect::default();
        module.visit(&mut collect);
        if collect.found.is_empty() {
            return Err(Error::NoParameters);
        }
        let mut params = Vec::with_capacity(collect.found.len());
        for found in collect.found {
            let len = found.shape.iter().product::<usize>();
            let err = |reason: String| Error::Tensor {
                path: found.path.clone(),
                reason,
            };
            let tensor = found.tensor.map_err(err)?;
            let pinned = pin(&tensor, &cube_device, len).map_err(err)?;
            let mut info = ParamInfo {
                id: found.id,
                path: found.path.clone(),
                shape: found.shape,
                len,
                group: 0,
            };
            info.group = assign(&info);
            if info.group >= groups.len() {
                return Err(Error::InvalidArgument(format!(
                    "parameter `{}` assigned to group {} of {}",
                    info.path,
                    info.group,
                    groups.len()
                )));
            }
            params.push(Registered {
                key: alloc_key(&tensor),
                info,
                _pin: pinned,
            });
        }

        let max_len = params.iter().map(|p| p.info.len).max().unwrap_or(0);
        let zeros = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgpu-adamw-burn zero gradients"),
            size: (4 * max_len as u64).max(4),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut order = Vec::with_capacity(params.len());
        let mut param_groups: Vec<ParamGroup> = groups
            .into_iter()
            .map(|config| ParamGroup {
                config,
                tensors: Vec::new(),
            })
            .collect();
        for (g, group) in param_groups.iter_mut().enumerate() {
            for (i, p) in params.iter().enumerate().filter(|(_, p)| p.info.group == g) {
                let r = p._pin.resource();
                group.tensors.push(TensorBinding {
                    param: r.buffer.clone(),
                    param_offset: r.offset,
                    grad: zeros.clone(),
                    grad_offset: 0,
                    len: p.info.len as u64,
                });
                order.push(i);
            }
        }
        let mut slot = vec![0; params.len()];
        for (k, &i) in order.iter().enumerate() {
            slot[i] = k;
        }
        // Burn's pending work (the parameters' initialisation) goes first.
        client.flush().map_err(server_error)?;
        let opt = GpuAdamW::new(&ctx.device, &ctx.queue, config, param_groups)?;
        Ok(Self {
            opt,
            ids: params.iter().map(|p| p.info.id).collect(),
            params,
            order,
            slot,
            zeros,
            missing: MissingGrad::default(),
            client,
            cube_device,
            steps: 0,
        })
    }

    /// Sets what a step does for a parameter without a gradient (default
    /// [`MissingGrad::Error`]).
    pub fn with_missing_grad(mut self, policy: MissingGrad) -> Self {
        self.missing = policy;
        self
    }

    /// One optimizer step on `module`'s parameters, in place, with the gradients in `grads`
    /// (`GradientsParams::from_grads(loss.backward(), &module)`), under the ordering rules
    /// in the [type's documentation](BurnAdamW). Records and submits the step; does not
    /// wait for it to run.
    ///
    /// `module` must be the module the optimizer was created for, with the same trainable
    /// parameters in the same allocations: anything else is an [`Error::ModuleChanged`]
    /// (the optimizer would update stale buffers). A parameter without a gradient follows
    /// [`MissingGrad`]. Gradients of parameters the optimizer does not hold are ignored.
    /// On an error nothing is submitted: the parameters, the moments and the schedule's
    /// step stay as they were.
    pub fn step<M: Module>(&mut self, module: &M, mut grads: GradientsParams) -> Result<()> {
        let mut gather = Gather {
            path: Vec::new(),
            grads: &mut grads,
            params: &self.params,
            ids: &self.ids,
            seen: HashSet::with_capacity(self.params.len()),
            next: 0,
            out: Vec::with_capacity(self.params.len()),
            error: None,
        };
        module.visit(&mut gather);
        if let Some(e) = gather.error {
            return Err(e);
        }
        if gather.next != self.params.len() {
            return Err(Error::ModuleChanged(format!(
                "{} of the {} registered parameters were found",
                gather.next,
                self.params.len()
            )));
        }
        let flat = gather.out;

        // Pin every gradient, in the optimizer's registration order.
        let mut held: Vec<(CubeTensor, Pinned)> = Vec::with_capacity(flat.len());
        let mut bindings: Vec<Option<GradBinding>> = vec![None; flat.len()];
        for (i, grad) in flat.into_iter().enumerate() {
            let info = &self.params[i].info;
            let err = |reason: String| Error::Tensor {
                path: info.path.clone(),
                reason: format!("its gradient: {reason}"),
            };
            let binding = match grad {
                None => match self.missing {
                    MissingGrad::Error => {
                        return Err(Error::MissingGradient {
                            path: info.path.clone(),
                        })
                    }
                    MissingGrad::Zero => GradBinding {
                        buffer: self.zeros.clone(),
                        offset: 0,
                        len: info.len as u64,
                    },
                },
                Some(grad) => {
                    let t = grad
                        .try_into_primitive::<Cube>()
                        .map_err(|e| err(format!("not a CubeCL tensor: {e:?}")))?;
                    let pinned = pin(&t, &self.cube_device, info.len).map_err(err)?;
                    let r = pinned.resource();
                    let binding = GradBinding {
                        buffer: r.buffer.clone(),
                        offset: r.offset,
                        len: info.len as u64,
                    };
                    held.push((t, pinned));
                    binding
                }
            };
            bindings[self.slot[i]] = Some(binding);
        }
        let bindings: Vec<GradBinding> = bindings.into_iter().flatten().collect();

        // Everything Burn recorded so far (the passes that wrote the gradients) goes to the
        // queue before the step.
        self.client.flush().map_err(server_error)?;
        // Re-pointed, recorded and submitted inside the device's error scopes.
        let submitted = self.opt.step_with_grads(&bindings);
        // Only now may Burn reuse the gradients' memory: its later work is queued after
        // the step.
        drop(held);
        submitted?;
        self.steps += 1;
        Ok(())
    }

    /// The parameters, in the optimizer's registration order (group by group, the module's
    /// visiting order within a group): the order of its state and of a
    /// [`CpuAdamW`](wgpu_adamw::CpuAdamW) twin's tensors.
    pub fn params(&self) -> Vec<&ParamInfo> {
        self.order.iter().map(|&i| &self.params[i].info).collect()
    }

    /// The fused optimizer, for everything else it offers: [`GpuAdamW::set_base_lr`],
    /// [`GpuAdamW::set_metric`] (ReduceLROnPlateau), [`GpuAdamW::state`] and checkpoints,
    /// [`GpuAdamW::read_counters`], ...
    pub fn optimizer(&self) -> &GpuAdamW {
        &self.opt
    }

    /// The learning rate the first param group used at the last step (0 before the
    /// first), read back from the device: it waits for the queue.
    pub fn lr(&self) -> Result<f32> {
        Ok(self.opt.read_lr()?.first().copied().unwrap_or(0.0))
    }

    /// [`BurnAdamW::lr`] for every param group.
    pub fn lrs(&self) -> Result<Vec<f32>> {
        Ok(self.opt.read_lr()?)
    }

    /// Steps submitted by this optimizer.
    pub fn steps(&self) -> u64 {
        self.steps
    }
}
