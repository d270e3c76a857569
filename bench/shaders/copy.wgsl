// The roofline of the benchmark: a copy that moves the bytes of one AdamW step and nothing
// else. Over the same buffers as the baseline (param, grad, exp_avg, exp_avg_sq and, with
// amsgrad, max_exp_avg_sq), it reads all of them and writes back all but grad: 28 bytes per
// parameter (36 with amsgrad), as the fused kernel. `info.swap` is 0, so every value is
// written back unchanged and the buffers stay usable by the other kernels; the compiler
// cannot know that, so every load and store happens.

struct Info {
    n: u32,       // vec4 elements in this segment
    grid_x: u32,  // workgroups along x
    swap: u32,    // always 0
    _pad: u32,
}

@group(0) @binding(0) var<uniform> info: Info;
@group(0) @binding(1) var<storage, read_write> param: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> grad: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> exp_avg: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> exp_avg_sq: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> max_exp_avg_sq: array<vec4<f32>>;

const WG: u32 = 256u;
const PER_THREAD: u32 = 4u; // vec4s per invocation: 16 floats, 4096 per workgroup

fn first(wg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * info.grid_x + wg.x) * WG * PER_THREAD + lid;
}

@compute @workgroup_size(256)
fn copy(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let base = first(wg, lid);
    let swap = info.swap != 0u;
    for (var k = 0u; k < PER_THREAD; k++) {
        let i = base + k * WG;
        if (i < info.n) {
            let p = param[i];
            let g = grad[i];
            let m = exp_avg[i];
            let v = exp_avg_sq[i];
            param[i] = select(p, g, swap);
            exp_avg[i] = select(m, v, swap);
            exp_avg_sq[i] = select(v, m, swap);
        }
    }
}

@compute @workgroup_size(256)
fn copy_amsgrad(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let base = first(wg, lid);
    let swap = info.swap != 0u;
    for (var k = 0u; k < PER_THREAD; k++) {
        let i = base + k * WG;
        if (i < info.n) {
            let p = param[i];
            let g = grad[i];
            let m = exp_avg[i];
            let v = exp_avg_sq[i];
            let x = max_exp_avg_sq[i];
            param[i] = select(p, g, swap);
            exp_avg[i] = select(m, v, swap);
            exp_avg_sq[i] = select(v, x, swap);
            max_exp_avg_sq[i] = select(x, m, swap);
        }
    }
}
