// AdamW fused with an on-device learning-rate schedule: the kernel's shared layout (uniform
// blocks, flags, the words of `meta`). The kernel is this file and, concatenated after it in
// this order (src/kernel.rs), numerics.wgsl, schedule.wgsl, grad_norm.wgsl, prologue.wgsl,
// update.wgsl and probes.wgsl; src/twin/ is its CPU twin, file for file (no twin for this
// one, whose structs are src/kernel.rs's, nor for the probes).
//
// One compute pass per optimizer step records, in this order:
//   `reduce` or `tensor_norms` (only with loss scaling or clipping): per chunk (or per tensor,
//       in PyTorch's CPU order) the gradients' sum of squares and non-finite flags;
//   `prologue` (one workgroup): the global norm and found_inf, the step counters, the
//       schedule (its program per group in `meta`, schedule.wgsl; ReduceLROnPlateau's
//       decision at an epoch boundary), and per param group the step's scalars (lr,
//       1 - lr*wd, lr / bc1, sqrt(bc2), beta1 terms) into `meta`;
//   `update` (one workgroup per chunk of 256 * ELEMS_PER_THREAD elements of one tensor) and
//       `update_packed` (one per chunk of packed short tensors): the per-element AdamW update.
// wgpu orders the dispatches because each writes what the next reads. Three more entry points
// (probes.wgsl) evaluate the schedule (lr, beta1) at arbitrary steps and the numerics functions on given
// operands, for the CLI and the tests.
//
// Numerics (see the crate docs): `1 - beta` and `ln(beta)` come from the host in f64 (a
// cycled beta1's ln on the device, from `1 - beta1`); `1 - beta^t` is `-expm1(t * ln(beta))`;
// phases are reduced in integers and evaluated with our own polynomials, logarithms and
// exponentials, never with WGSL's builtin transcendentals, whose precision varies; divisions
// and square roots in the prologue are correctly rounded (div_rn, sqrt_rn), so the device
// and the twin agree bit for bit.

struct Globals {
    sched_at: u32,        // word offset of the schedule region in `meta` (schedule.wgsl)
    steps_per_epoch: u32,
    sched_stride: u32,    // words of one group's schedule program
    sched_state_at: u32,  // ReduceLROnPlateau's state, relative to the region
    growth_interval: u32, // GradScaler (FLAG_GRAD_SCALER)
    ema_weight: f32,      // 1 - the EMA's decay, computed in f64
    flags: u32,           // FLAG_*
    n_groups: u32,
    growth_factor: f32,   // GradScaler, rounded to f32
    backoff_factor: f32,
    eps: f32,
    beta1: f32,
    beta2: f32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    lerp_big_coeff: f32,  // (1 - beta1) - 1 in f32: torch.lerp's coefficient for weights >= 0.5
    ln_beta1: f32,
    ln_beta2: f32,
    groups_at: u32,       // word offsets into `meta`
    scalars_at: u32,
    chunks_at: u32,
    zero: u32,            // always 0, opaque to the compiler (see `opaque`)
    n_chunks: u32,        // chunks of all dispatches (gradient-norm partials)
    max_grad_norm: f32,   // clipping threshold (FLAG_CLIP)
    n_tensors: u32,
    tensors_at: u32,      // word offset of the tensor table in `meta` (FLAG_TORCH_NORM)
    tensor_norms_at: u32, // word offset of the per-tensor norms in `partials`
    segments_at: u32,     // word offset of the segment table of packed chunks in `meta`
    accumulate: u32,      // micro-batches per optimizer step (FLAG_ACCUMULATE)
    grad_round: u32,      // DTYPE_* gradient ops round to (pure 16-bit clipping), else f32
    sr_at: u32,           // stochastic rounding table in `meta` (update_mixed.wgsl), 0: off
    n_ranks: u32,         // ranks whose norm partials the prologue folds (FLAG_SHARDED), else 0
}

struct DispatchInfo {
    first_chunk: u32,
    n_chunks: u32,
    grid_x: u32,
    first_tensor: u32,    // this binding's tensors in the tensor table (FLAG_TORCH_NORM)
    n_tensors: u32,
    n_runs: u32,          // chunks [0, n_runs) are runs of one tensor (`update`), the rest
    packed_grid_x: u32,   // packed chunks of short tensors (`update_packed`, this grid width)
    views: u32,           // VIEWS_VEC4 or VIEWS_F32 (update.wgsl)
}

@group(0) @binding(0) var<uniform> g: Globals;

const FLAG_AMSGRAD: u32 = 1u;
const FLAG_MAXIMIZE: u32 = 2u;
const FLAG_LOSS_SCALE: u32 = 4u;  // unscale by amp[0] and skip the step on non-finite gradients
const FLAG_CLIP: u32 = 8u;        // clip the global gradient norm to max_grad_norm
const FLAG_TORCH_NORM: u32 = 16u; // the norm in PyTorch's CPU summation order (see below)
const FLAG_CYCLE_MOMENTUM: u32 = 32u; // the schedule sets beta1 (onecycle, cyclic)
const FLAG_PLATEAU: u32 = 64u;    // the schedule is ReduceLROnPlateau (a state machine)
const FLAG_GRAD_SCALER: u32 = 128u; // GradScaler: update the loss scale after every step
const FLAG_ACCUMULATE: u32 = 256u; // gradients accumulate over g.accumulate calls (accumulate.wgsl)
const FLAG_SHARDED: u32 = 512u;    // one shard of several: the norm's partials are exchanged (grad_norm.wgsl)

// Words of the control buffer (`amp`, binding 10/11): the host or the engine writes the loss
// scale, the plateau metric and the lr multiplier; the prologue writes found_inf, the norm,
// the clipping coefficient and, with a GradScaler, the next scale and its growth tracker.
const CONTROL_SCALE: u32 = 0u;
const CONTROL_METRIC: u32 = 4u;
const CONTROL_LR_SCALE: u32 = 5u;
const CONTROL_GROWTH_TRACKER: u32 = 6u; // GradScaler
const CONTROL_SCALE_USED: u32 = 7u;     // the scale the last step used
// Words per group of the per-step scalars in `meta`: lr, 1 - lr*wd, lr / bc1, sqrt(bc2),
// 1 - beta1, (1 - beta1) - 1, beta1, unused.
const SCALAR_WORDS: u32 = 8u;

// meta[0]: scheduler steps taken, meta[1]: Adam steps taken (t of the last update),
// meta[2]: the last step was skipped, meta[3]: its gradient multiplier 1/loss_scale,
// meta[4]: its clipping coefficient.
const COUNTER_SCHED: u32 = 0u;
const COUNTER_ADAM: u32 = 1u;
const STEP_SKIPPED: u32 = 2u;
const STEP_INV_SCALE: u32 = 3u;
const STEP_CLIP_COEF: u32 = 4u;
// meta[5]: micro-batches accumulated since the last optimizer step (FLAG_ACCUMULATE).
const COUNTER_MICRO: u32 = 5u;
// meta[STEP_SKIPPED] of a call that only accumulated (not an optimizer step).
const STEP_MICRO: u32 = 2u;

// meta[7] is always 0 (never written after creation): the prologue loads it into `dz`.
const META_ZERO: u32 = 7u;

// A zero the compiler cannot see: 0 loaded from a storage buffer at the start of the entry
// points that evaluate the schedule (else the constant 0). Control flow in those entry points
// depends on uniforms only through `dz`: lavapipe re-optimises (clones, inlines, optimises)
// a shader whose branches or loops depend on uniform values alone at every dispatch, which
// for the prologue cost ~30 ms a step; and loop bounds `n + dz` are never unrolled.
var<private> dz: u32;

const WORKGROUP: u32 = 256u;
// Elements per invocation of `update` and `reduce`: a chunk is WORKGROUP * ELEMS_PER_THREAD
// elements (set by the host, GpuOptions::elems_per_thread).
override ELEMS_PER_THREAD: u32 = 8u;
