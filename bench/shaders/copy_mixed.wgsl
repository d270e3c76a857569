// The rooflines of the mixed-precision rows: copies that move the bytes of one
// mixed-precision AdamW step (`update_mixed`) and nothing else, each stream at its own
// element size. As `copy.wgsl`: `info.swap` is 0, so every value is written back unchanged
// (the compiler cannot know that, so every load and store happens).
//
// - `copy16`: 16-bit param, grad, exp_avg, exp_avg_sq; reads all four, writes all but grad:
//   14 bytes per parameter. Eight 16-bit elements per vec4<u32>.
// - `copy_p16_s32`: 16-bit param and grad, f32 exp_avg and exp_avg_sq; reads all four,
//   writes all but grad: 2 + 2 + 8 + 8 + 2 = 22 bytes per parameter. Per four elements a
//   vec2<u32> of 16-bit values and a vec4<u32> of f32 ones.
// - `copy_master`: 16-bit grad, f32 master weights, exp_avg and exp_avg_sq read and written
//   back but grad, 16-bit param written only (the fused step never reads it: it updates the
//   master weights and stores their rounding): 2 + 8 + 8 + 8 + 2 = 28 bytes per parameter.
//   The param words it writes are the gradient words (swap = 0); the fused step overwrites
//   them and never reads them.

struct Info {
    n: u32,       // vectors in this segment
    grid_x: u32,  // workgroups along x
    swap: u32,    // always 0
    _pad: u32,
}

@group(0) @binding(0) var<uniform> info: Info;

// copy16
@group(0) @binding(1) var<storage, read_write> param8: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> grad8: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> exp_avg8: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read_write> exp_avg_sq8: array<vec4<u32>>;

// copy_p16_s32 and copy_master
@group(0) @binding(5) var<storage, read_write> param4: array<vec2<u32>>;
@group(0) @binding(6) var<storage, read> grad4: array<vec2<u32>>;
@group(0) @binding(7) var<storage, read_write> exp_avg4: array<vec4<u32>>;
@group(0) @binding(8) var<storage, read_write> exp_avg_sq4: array<vec4<u32>>;
@group(0) @binding(9) var<storage, read_write> master4: array<vec4<u32>>;

const WG: u32 = 256u;
const PER_THREAD: u32 = 4u; // vectors per invocation, 1024 per workgroup

fn first(wg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * info.grid_x + wg.x) * WG * PER_THREAD + lid;
}

@compute @workgroup_size(256)
fn copy16(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let base = first(wg, lid);
    let swap = info.swap != 0u;
    for (var k = 0u; k < PER_THREAD; k++) {
        let i = base + k * WG;
        if (i < info.n) {
            let p = param8[i];
            let g = grad8[i];
            let m = exp_avg8[i];
            let v = exp_avg_sq8[i];
            param8[i] = select(p, g, swap);
            exp_avg8[i] = select(m, v, swap);
            exp_avg_sq8[i] = select(v, m, swap);
        }
    }
}

@compute @workgroup_size(256)
fn copy_p16_s32(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let base = first(wg, lid);
    let swap = info.swap != 0u;
    for (var k = 0u; k < PER_THREAD; k++) {
        let i = base + k * WG;
        if (i < info.n) {
            let p = param4[i];
            let g = grad4[i];
            let m = exp_avg4[i];
            let v = exp_avg_sq4[i];
            param4[i] = select(p, g, swap);
            exp_avg4[i] = select(m, v, swap);
            exp_avg_sq4[i] = select(v, m, swap);
        }
    }
}

@compute @workgroup_size(256)
fn copy_master(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let base = first(wg, lid);
    let swap = info.swap != 0u;
    for (var k = 0u; k < PER_THREAD; k++) {
        let i = base + k * WG;
        if (i < info.n) {
            let g = grad4[i];
            let w = master4[i];
            let m = exp_avg4[i];
            let v = exp_avg_sq4[i];
            param4[i] = select(g, w.xy, swap);
            master4[i] = select(w, m, swap);
            exp_avg4[i] = select(m, v, swap);
            exp_avg_sq4[i] = select(v, w, swap);
        }
    }
}
