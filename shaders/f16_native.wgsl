// ---------------------------------------------------------------- f16 conversions, native
// The f16 conversions of `widen16`/`narrow16` through the device's own f16 conversion
// (WGSL's pack2x16float/unpack2x16float: one instruction where the hardware converts f16,
// instead of the packed variant's integer sequence). WGSL requires neither rounding to
// nearest even nor subnormals nor infinities of them, so the host uses this variant only
// after a probe found it bit-identical to the packed one on the device (GpuOptions::f16).
// (WGSL's `f16` type would need a bitcast between u32 and vec2<f16>, which naga does not
// translate; these builtins compile to the same conversions.)

fn f16_widen(h: u32) -> f32 {
    return unpack2x16float(h & 0xffffu).x;
}

fn f16_narrow(x: f32) -> u32 {
    return pack2x16float(vec2<f32>(x, 0.0)) & 0xffffu;
}
