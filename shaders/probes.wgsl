// ---------------------------------------------------------------- schedule probe
// (no twin: the CPU runs the twin functions directly)
//
// The lr of arbitrary optimizer steps, through the same `schedule_lr` the prologue uses:
// probe_io[0] holds the base lr's bits, probe_io[1..] step numbers (1-based), replaced by
// their lr's bits.

@group(0) @binding(9) var<storage, read_write> probe_io: array<u32>;

@compute @workgroup_size(64)
fn schedule_probe(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>) {
    // A 2-D grid past 65535 workgroups: rows of n.x * 64 steps.
    let i = id.y * n.x * 64u + id.x + 1u;
    if (i >= arrayLength(&probe_io)) {
        return;
    }
    let step = probe_io[i];
    let epoch = (step - 1u) / g.steps_per_epoch;
    probe_io[i] = bitcast<u32>(schedule_lr(bitcast<f32>(probe_io[0]), epoch));
}

// ---------------------------------------------------------------- numerics probe
//
// One numerics function over many inputs, for bit-for-bit tests against the CPU twin:
// probe_io[0] selects the function (NUMERICS_* in src/probe.rs), then 4 words per case:
// a, b, c (f32 bits), and the result written in the fourth.

@compute @workgroup_size(64)
fn numerics_probe(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>) {
    let at = 1u + 4u * (id.y * n.x * 64u + id.x);
    if (at + 3u >= arrayLength(&probe_io)) {
        return;
    }
    let a = bitcast<f32>(probe_io[at]);
    let b = bitcast<f32>(probe_io[at + 1u]);
    let c = bitcast<f32>(probe_io[at + 2u]);
    var r: f32;
    switch (probe_io[0]) {
        case 0u: { r = fma_exact(a, b, c); }
        case 1u: { r = lerp_fma(a, b, c); }
        case 2u: { r = recip(a); }
        case 3u: { r = div_rn(a, b); }
        case 4u: { r = sqrt_rn(a); }
        default: { r = expm1_neg(a); }
    }
    probe_io[at + 3u] = bitcast<u32>(r);
}
