// ---------------------------------------------------------------- f16 conversions, packed
// The f16 conversions of `widen16`/`narrow16` on any adapter: integer operations on the
// 16-bit patterns (numerics.wgsl), correctly rounded everywhere. The other variant of this
// file, f16_native.wgsl, uses WGSL's f16 type where the device has SHADER_F16.

fn f16_widen(h: u32) -> f32 {
    return f16_to_f32(h);
}

fn f16_narrow(x: f32) -> u32 {
    return f32_to_f16(x);
}
