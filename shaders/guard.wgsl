// The non-finite guard: a scan that raises a flag word when a region holds a NaN or an infinity,
// and a copy that runs only when a flag word is in a wanted state (MoCo's queue write, rolling
// back state a skipped step changed). Every invocation of the copy reads the flag itself, so the
// decision needs no host round trip and a training step stays one submission.
//
// Values are read as u32 bits and tested on the exponent (all ones: NaN or ±inf): a float
// comparison such as `x != x` may be folded away by a compiler that assumes finite math.
// Flags are only ever OR-ed with 1, so the result does not depend on the order of the atomics.

struct Params {
    n: u32,       // words to scan or copy
    threads: u32, // invocations launched (grid-stride loop)
    slot: u32,    // check: index of the flag word to raise
    mode: u32,    // check: 1 raises the flag whatever the values (a dry run)
                  // copy_if: 1 copies when the flag is raised, 0 when it is not
    src: u32,     // first word of the data in binding 0 (bindings start at aligned offsets)
    dst: u32,     // copy_if: first word written in binding 2
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

@group(1) @binding(0) var<storage, read_write> x: array<u32>;
@group(1) @binding(1) var<storage, read_write> flags: array<atomic<u32>>;
@group(1) @binding(2) var<storage, read_write> dst: array<u32>;

fn non_finite(bits: u32) -> bool {
    return (bits & 0x7f800000u) == 0x7f800000u;
}

@compute @workgroup_size(256)
fn check(@builtin(global_invocation_id) gid: vec3<u32>) {
    var bad = p.mode != 0u && gid.x == 0u;
    for (var i = gid.x; i < p.n; i += p.threads) {
        bad = bad || non_finite(x[p.src + i]);
    }
    if bad {
        atomicOr(&flags[p.slot], 1u);
    }
}

@compute @workgroup_size(256)
fn copy_if(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (atomicLoad(&flags[0]) != 0u) != (p.mode != 0u) {
        return;
    }
    for (var i = gid.x; i < p.n; i += p.threads) {
        dst[p.dst + i] = x[p.src + i];
    }
}
