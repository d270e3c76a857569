// Bindings shared by every kernel of the demo's MLP (prepended to each shader file).
//
// All activations, per-sample losses and backward deltas live in one `acts` buffer; the
// parameters and gradients live in one arena each, with the same layout, so the optimizer
// updates the whole model in one dispatch.

struct Cfg {
    // Offset (in f32 elements) of the layer's input activations in `acts`.
    a_off: u32,
    // Offset of the delta (gradient w.r.t. the layer's pre-activation output) in `acts`.
    d_off: u32,
    // Offset where the kernel writes its result in `acts`.
    dst_off: u32,
    // Number of threads doing work.
    n_threads: u32,
    in_dim: u32,
    out_dim: u32,
    batch: u32,
    // 1: the layer's output (forward) or input (backward) goes through a ReLU.
    relu: u32,
    // Offsets of the layer's weight matrix [out_dim, in_dim] and bias [out_dim] in the arenas.
    w_off: u32,
    b_off: u32,
    // Offset of the per-sample losses [batch] and hits [batch] in `acts`.
    aux_off: u32,
    // Workgroups along x (a grid larger than 65535 workgroups spills into y).
    grid_x: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    _pad3: u32,
}

@group(0) @binding(0) var<uniform> cfg: Cfg;
@group(0) @binding(1) var<storage, read> params: array<f32>;
@group(0) @binding(2) var<storage, read_write> grads: array<f32>;
@group(0) @binding(4) var<storage, read> labels: array<u32>;
@group(0) @binding(5) var<storage, read_write> stats: array<f32>;
// The same parameter buffer seen as vec4s, for the tiled kernels (every tensor starts at a
// multiple of 4 elements). The activations have only this view: WebGPU forbids two writable
// bindings of one buffer whose ranges overlap (Dawn enforces it), so a single activation is a
// component (`act`, `set_act`).
@group(0) @binding(6) var<storage, read> params4: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> acts4: array<vec4<f32>>;

fn act(i: u32) -> f32 {
    return acts4[i >> 2u][i & 3u];
}

fn set_act(i: u32, x: f32) {
    acts4[i >> 2u][i & 3u] = x;
}

const WG: u32 = 64u;

fn thread_index(gid: vec3<u32>) -> u32 {
    return gid.x + gid.y * cfg.grid_x * WG;
}

