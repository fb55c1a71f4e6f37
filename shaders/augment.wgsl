// Batch gathering and augmentation: reads u8 images (NHWC, packed four to a u32 word) by index and
// writes an f32 batch, applying a per-sample crop box (random resized crop and translation are both
// a crop box, possibly reaching outside the image, where pixels are 0), a horizontal flip,
// brightness/contrast jitter and Gaussian noise, then normalising with the dataset mean and std.
//
// The per-sample random choices come from the host (seeded, 8 words per sample); the per-pixel
// noise is a counter-based hash of (seed, sample, pixel), so a batch is reproducible bit for bit.

struct Params {
    n: u32,         // output elements: batch * out_h * out_w * channels
    in_h: u32,
    in_w: u32,
    channels: u32,
    out_h: u32,
    out_w: u32,
    seed: u32,
    _pad: u32,
    noise_std: f32,
    mean: f32,      // dataset pixel mean in [0, 1], also the contrast pivot
    inv_std: f32,   // 1 / dataset pixel std
    _pad2: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(1) @binding(0) var<storage, read_write> images: array<u32>;
// Per sample: crop x0, y0, width, height (f32 bits, source pixels), flip (0/1), brightness,
// contrast (f32 bits), image index.
@group(1) @binding(1) var<storage, read_write> samples: array<u32>;
@group(1) @binding(2) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;

fn pixel(img: u32, y: i32, x: i32, c: u32) -> f32 {
    if y < 0 || x < 0 || y >= i32(p.in_h) || x >= i32(p.in_w) {
        return 0.0;
    }
    let i = ((img * p.in_h + u32(y)) * p.in_w + u32(x)) * p.channels + c;
    return f32((images[i / 4u] >> ((i % 4u) * 8u)) & 0xffu) / 255.0;
}

fn hash(v: u32) -> u32 {
    // PCG-style integer hash.
    var s = v * 747796405u + 2891336453u;
    let w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
    return (w >> 22u) ^ w;
}

fn uniform01(v: u32) -> f32 {
    return (f32(hash(v) >> 8u) + 0.5) / 16777216.0;
}

@compute @workgroup_size(256)
fn augment(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if i >= p.n {
        return;
    }
    let c = i % p.channels;
    let u = (i / p.channels) % p.out_w;
    let v = (i / (p.channels * p.out_w)) % p.out_h;
    let b = i / (p.channels * p.out_w * p.out_h);
    let s = b * 8u;
    let x0 = bitcast<f32>(samples[s]);
    let y0 = bitcast<f32>(samples[s + 1u]);
    let cw = bitcast<f32>(samples[s + 2u]);
    let ch = bitcast<f32>(samples[s + 3u]);
    let flip = samples[s + 4u];
    let brightness = bitcast<f32>(samples[s + 5u]);
    let contrast = bitcast<f32>(samples[s + 6u]);
    let img = samples[s + 7u];

    let uu = select(u, p.out_w - 1u - u, flip != 0u);
    // Bilinear sample at the output pixel's centre mapped into the crop box.
    let sx = x0 + (f32(uu) + 0.5) * cw / f32(p.out_w) - 0.5;
    let sy = y0 + (f32(v) + 0.5) * ch / f32(p.out_h) - 0.5;
    let fx = floor(sx);
    let fy = floor(sy);
    let ax = sx - fx;
    let ay = sy - fy;
    let xi = i32(fx);
    let yi = i32(fy);
    let top = mix(pixel(img, yi, xi, c), pixel(img, yi, xi + 1, c), ax);
    let bottom = mix(pixel(img, yi + 1, xi, c), pixel(img, yi + 1, xi + 1, c), ax);
    var x = mix(top, bottom, ay);

    x = clamp((x * brightness - p.mean) * contrast + p.mean, 0.0, 1.0);
    if p.noise_std > 0.0 {
        // Box-Muller from two hashed uniforms.
        let key = hash(p.seed ^ hash(i));
        let r = sqrt(-2.0 * log(uniform01(key)));
        x = x + p.noise_std * r * cos(6.2831853 * uniform01(key ^ 0x9e3779b9u));
    }
    out[i] = (x - p.mean) * p.inv_std;
}
