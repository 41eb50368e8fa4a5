// input.wgsl: 8-bit inputs expanded on the device, so that a batch of bytes crosses the bus at one
// byte per value instead of four.
//
// Bindings (group 0):
//   0 P       uniform InputParams: n samples of len values
//   1 pixels  storage read        the bytes, four per u32 word (byte k of word i is value 4i + k,
//                                 little-endian), n * len values
//   2 lut     storage read        256 f32: the network input value of each byte (scaled and
//                                 normalised by the host exactly as its f32 inputs are)
//   3 x       storage read_write  the network input, [n, len] f32
// Dispatch: 1-D over invocations, 64 per workgroup, folded into (x, y) workgroups when there are
// more than the per-dimension limit; index = gid.x + gid.y * num_workgroups.x * 64.
//   unpack_u8: at least ceil(n * len / 4) invocations; invocation i expands word i (four values)

struct InputParams {
    n: u32,
    len: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> P: InputParams;
@group(0) @binding(1) var<storage, read> pixels: array<u32>;
@group(0) @binding(2) var<storage, read> lut: array<f32>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;

fn flat_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 64u;
}

@compute @workgroup_size(64)
fn unpack_u8(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let word = flat_index(gid, nwg);
    let total = P.n * P.len;
    if (word >= (total + 3u) / 4u) {
        return;
    }
    let bits = pixels[word];
    for (var k = 0u; k < 4u; k++) {
        let i = word * 4u + k;
        if (i < total) {
            x[i] = lut[(bits >> (8u * k)) & 0xffu];
        }
    }
}
