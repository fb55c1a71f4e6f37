// Copy between two non-overlapping ranges of one buffer, which copy_buffer_to_buffer forbids.
// The whole buffer is bound once; offsets are in 32-bit words.

struct Params {
    n: u32,
    src: u32,
    dst: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(1) @binding(0) var<storage, read_write> buf: array<u32>;

const WG: u32 = 256u;

@compute @workgroup_size(256)
fn copy_within(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if i < p.n {
        buf[p.dst + i] = buf[p.src + i];
    }
}
