// The unfused baseline: AdamW as PyTorch's single-tensor path (`foreach=False, fused=False`)
// runs it, one kernel per elementwise operation per tensor, with the step's scalars (lr from
// the schedule, bias corrections) computed on the host and uploaded before every step:
//
//   param.mul_(1 - lr * wd)
//   exp_avg.lerp_(grad, 1 - beta1)
//   exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
//   [amsgrad] torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
//   denom = (exp_avg_sq.sqrt() / sqrt(bias_correction2)).add_(eps)
//   param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
//
// Each entry point is one of those operations; every one is vectorized (vec4) as PyTorch's
// elementwise kernels are.

struct Scalars {
    decay: f32,           // 1 - lr * wd
    lerp_weight: f32,     // 1 - beta1
    beta2: f32,
    one_minus_beta2: f32,
    bc2_sqrt: f32,        // sqrt(1 - beta2^t)
    eps: f32,
    neg_step_size: f32,   // -lr / (1 - beta1^t)
    _pad: f32,
}

struct Info {
    n: u32,       // vec4 elements of this piece of a tensor
    grid_x: u32,  // workgroups along x
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> s: Scalars;
@group(0) @binding(1) var<uniform> info: Info;
@group(0) @binding(2) var<storage, read_write> param: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> grad: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> exp_avg: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> exp_avg_sq: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> denom: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> max_exp_avg_sq: array<vec4<f32>>;

const WG: u32 = 256u;
const PER_THREAD: u32 = 4u;

fn first(wg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * info.grid_x + wg.x) * WG * PER_THREAD + lid;
}

@compute @workgroup_size(256)
fn mul_param(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = first(wg, lid);
    for (var k = 0u; k < PER_THREAD; k++) {
        let i = b + k * WG;
        if (i < info.n) { param[i] = param[i] * s.decay; }
    }
}

@compute @workgroup_size(256)
fn lerp_exp_avg(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = first(wg, lid);
    for (var k = 0u; k < PER_THREAD; k++) {
        let i = b + k * WG;
        if (i < info.n) {
            let m = exp_avg[i];
            exp_avg[i] = m + s.lerp_weight * (grad[i] - m);
        }
    }
}

@compute @workgroup_size(256)
fn mul_exp_avg_sq(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = first(wg, lid);
    for (var k = 0u; k < PER_THREAD; k++) {
        let i = b + k * WG;
        if (i < info.n) { exp_avg_sq[i] = exp_avg_sq[i] * s.beta2; }
    }
}

@compute @workgroup_size(256)
fn addcmul_exp_avg_sq(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = first(wg, lid);
    for (var k = 0u; k < PER_THREAD; k++) {
        let i = b + k * WG;
        if (i < info.n) {
            let g = grad[i];
            exp_avg_sq[i] = exp_avg_sq[i] + s.one_minus_beta2 * g * g;
        }
    }
}

@compute @workgroup_size(256)
fn maximum_max_exp_avg_sq(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = first(wg, lid);
    for (var k = 0u; k < PER_THREAD; k++) {
        let i = b + k * WG;
        if (i < info.n) { max_exp_avg_sq[i] = max(max_exp_avg_sq[i], exp_avg_sq[i]); }
    }
}

@compute @workgroup_size(256)
fn sqrt_denom(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = first(wg, lid);
    for (var k = 0u; k < PER_THREAD; k++) {
        let i = b + k * WG;
        if (i < info.n) { denom[i] = sqrt(exp_avg_sq[i]); }
    }
}

@compute @workgroup_size(256)
fn sqrt_denom_amsgrad(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = first(wg, lid);
    for (var k = 0u; k < PER_THREAD; k++) {
        let i = b + k * WG;
        if (i < info.n) { denom[i] = sqrt(max_exp_avg_sq[i]); }
    }
}

@compute @workgroup_size(256)
fn div_denom(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = first(wg, lid);
    for (var k = 0u; k < PER_THREAD; k++) {
        let i = b + k * WG;
        if (i < info.n) { denom[i] = denom[i] / s.bc2_sqrt; }
    }
}

@compute @workgroup_size(256)
fn add_denom(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = first(wg, lid);
    for (var k = 0u; k < PER_THREAD; k++) {
        let i = b + k * WG;
        if (i < info.n) { denom[i] = denom[i] + s.eps; }
    }
}

@compute @workgroup_size(256)
fn addcdiv_param(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = first(wg, lid);
    for (var k = 0u; k < PER_THREAD; k++) {
        let i = b + k * WG;
        if (i < info.n) { param[i] = param[i] + s.neg_step_size * (exp_avg[i] / denom[i]); }
    }
}
