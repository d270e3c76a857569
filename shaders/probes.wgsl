// ---------------------------------------------------------------- schedule probe
// (no twin: the CPU runs the twin functions directly)
//
// The lr of arbitrary optimizer steps, through the same `schedule_eval` the prologue uses, for
// group 0's program in `meta` (bound at 8, as in the prologue): probe_io[0] holds the base
// lr's bits, probe_io[1..] step numbers (1-based), replaced by their lr's bits
// (`momentum_probe`: by beta1's). Both through `schedule_eval`, as the prologue.

@group(0) @binding(9) var<storage, read_write> probe_io: array<u32>;

@compute @workgroup_size(64)
fn schedule_probe(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>) {
    dz = n.x >> 31u; // 0: at most 65535 workgroups
    // A 2-D grid past 65535 workgroups: rows of n.x * 64 steps.
    let i = id.y * n.x * 64u + id.x + 1u;
    if (i >= arrayLength(&probe_io)) {
        return;
    }
    let step = probe_io[i];
    let epoch = (step - 1u) / g.steps_per_epoch;
    probe_io[i] = bitcast<u32>(schedule_eval(0u, epoch, bitcast<f32>(probe_io[0])).x);
}

@compute @workgroup_size(64)
fn momentum_probe(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>) {
    dz = n.x >> 31u;
    let i = id.y * n.x * 64u + id.x + 1u;
    if (i >= arrayLength(&probe_io)) {
        return;
    }
    let epoch = (probe_io[i] - 1u) / g.steps_per_epoch;
    probe_io[i] = bitcast<u32>(schedule_eval(0u, epoch, 1.0).y);
}

// ---------------------------------------------------------------- numerics probe
//
// One numerics function over many inputs, for bit-for-bit tests against the CPU twin:
// probe_io[0] selects the function (`Numerics` in src/probe.rs), then 4 words per case:
// a, b, c (f32 bits), and the result's bits written in the fourth (an f32's, or the u32 of the
// 16-bit conversions: results are never touched as floats, so no subnormal is flushed).

@compute @workgroup_size(64)
fn numerics_probe(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>) {
    dz = n.x >> 31u;
    let at = 1u + 4u * (id.y * n.x * 64u + id.x);
    if (at + 3u >= arrayLength(&probe_io)) {
        return;
    }
    let ua = probe_io[at];
    let ub = probe_io[at + 1u];
    let uc = probe_io[at + 2u];
    let a = bitcast<f32>(ua);
    let b = bitcast<f32>(ub);
    let c = bitcast<f32>(uc);
    var r: u32;
    switch (probe_io[0]) {
        case 0u: { r = bitcast<u32>(fma_exact(a, b, c)); }
        case 1u: { r = bitcast<u32>(lerp_fma(a, b, c)); }
        case 2u: { r = bitcast<u32>(recip(a)); }
        case 3u: { r = bitcast<u32>(div_rn(a, b)); }
        case 4u: { r = bitcast<u32>(sqrt_rn(a)); }
        case 6u: { r = bitcast<u32>(ln_pos(a)); }
        case 7u: { r = bitcast<u32>(ln_one_minus(a)); }
        case 8u: { r = bitcast<u32>(exp_neg(a)); }
        case 9u: { r = bitcast<u32>(exp2_mul(ua, b, c)); }
        case 10u: { r = bitcast<u32>(pow_ratio(ua, ub, c)); }
        case 11u: { r = bitcast<u32>(cos_sq_half_pi(a, b, c)); }
        case 12u: { r = bitcast<u32>(widen16(ua, ub)); }
        case 13u: { r = narrow16(a, ub); }
        case 14u: { r = narrow16_stochastic(a, ub, uc); }
        default: { r = bitcast<u32>(expm1_neg(a)); }
    }
    probe_io[at + 3u] = r;
}
