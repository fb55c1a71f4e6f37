// Batch gathering and augmentation: reads u8 images (NHWC, packed four to a u32 word) by index and
// writes an f32 batch. Per sample: a crop box (random resized crop and translation are both a crop
// box, possibly reaching outside the image, where pixels are 0) sampled bilinearly, a horizontal
// flip, colour jitter (brightness, contrast, saturation, hue, in the sample's order, as
// torchvision's ColorJitter), random grayscale, Gaussian noise, then normalisation by the per-channel
// dataset mean and std. Saturation, hue and grayscale act on 3-channel (RGB) images only.
//
// One invocation writes one output pixel, all its channels: the colour operations mix channels.
// The per-sample random choices come from the host (seeded, 12 words per sample); the per-element
// noise is a counter-based hash of (seed, element), so a batch is reproducible bit for bit.

struct Params {
    n: u32,         // output pixels: batch * out_h * out_w
    in_h: u32,
    in_w: u32,
    channels: u32,  // at most 4
    out_h: u32,
    out_w: u32,
    seed: u32,
    _pad: u32,
    noise_std: f32,
    pivot: f32,     // the dataset's mean grey level in [0, 1]: the contrast pivot
    _pad2: f32,
    _pad3: f32,
    mean: vec4<f32>,    // per-channel dataset mean in [0, 1]
    inv_std: vec4<f32>, // 1 / per-channel dataset std
}

@group(0) @binding(0) var<uniform> p: Params;
@group(1) @binding(0) var<storage, read_write> images: array<u32>;
// Per sample: crop x0, y0, width, height (f32 bits, source pixels), flip (0/1), brightness,
// contrast (f32 bits), image index, saturation, hue (f32 bits), the jitter order (four 2-bit
// operations: 0 brightness, 1 contrast, 2 saturation, 3 hue), grayscale (0/1).
@group(1) @binding(1) var<storage, read_write> samples: array<u32>;
@group(1) @binding(2) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;
const SAMPLE_WORDS: u32 = 12u;

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

// torchvision's grayscale weights.
fn luma(v: vec3<f32>) -> f32 {
    return dot(v, vec3<f32>(0.2989, 0.587, 0.114));
}

// Hue rotated by `shift` turns through HSV, as torchvision's adjust_hue on float images.
fn rotate_hue(v: vec3<f32>, shift: f32) -> vec3<f32> {
    let maxc = max(v.r, max(v.g, v.b));
    let minc = min(v.r, min(v.g, v.b));
    let cr = maxc - minc;
    if cr == 0.0 {
        return v; // grey: no hue to rotate
    }
    let s = cr / maxc;
    let d = (vec3<f32>(maxc) - v) / cr;
    var h: f32;
    if maxc == v.r {
        h = d.b - d.g;
    } else if maxc == v.g {
        h = 2.0 + d.r - d.b;
    } else {
        h = 4.0 + d.g - d.r;
    }
    h = fract(fract(h / 6.0 + 1.0) + shift);
    let h6 = h * 6.0;
    let sector = floor(h6);
    let f = h6 - sector;
    let pp = clamp(maxc * (1.0 - s), 0.0, 1.0);
    let q = clamp(maxc * (1.0 - s * f), 0.0, 1.0);
    let t = clamp(maxc * (1.0 - s * (1.0 - f)), 0.0, 1.0);
    var rgb: vec3<f32>;
    switch u32(sector) % 6u {
        case 0u: { rgb = vec3<f32>(maxc, t, pp); }
        case 1u: { rgb = vec3<f32>(q, maxc, pp); }
        case 2u: { rgb = vec3<f32>(pp, maxc, t); }
        case 3u: { rgb = vec3<f32>(pp, q, maxc); }
        case 4u: { rgb = vec3<f32>(t, pp, maxc); }
        default: { rgb = vec3<f32>(maxc, pp, q); }
    }
    return rgb;
}

@compute @workgroup_size(256)
fn augment(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if i >= p.n {
        return;
    }
    let u = i % p.out_w;
    let v = (i / p.out_w) % p.out_h;
    let b = i / (p.out_w * p.out_h);
    let s = b * SAMPLE_WORDS;
    let x0 = bitcast<f32>(samples[s]);
    let y0 = bitcast<f32>(samples[s + 1u]);
    let cw = bitcast<f32>(samples[s + 2u]);
    let ch = bitcast<f32>(samples[s + 3u]);
    let flip = samples[s + 4u];
    let brightness = bitcast<f32>(samples[s + 5u]);
    let contrast = bitcast<f32>(samples[s + 6u]);
    let img = samples[s + 7u];
    let saturation = bitcast<f32>(samples[s + 8u]);
    let hue = bitcast<f32>(samples[s + 9u]);
    let order = samples[s + 10u];
    let grayscale = samples[s + 11u];

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
    var x = vec4<f32>(0.0);
    for (var c = 0u; c < p.channels; c++) {
        let top = mix(pixel(img, yi, xi, c), pixel(img, yi, xi + 1, c), ax);
        let bottom = mix(pixel(img, yi + 1, xi, c), pixel(img, yi + 1, xi + 1, c), ax);
        x[c] = mix(top, bottom, ay);
    }

    // Each jitter operation is skipped at its identity factor, so an unjittered sample is exact.
    let rgb = p.channels == 3u;
    for (var k = 0u; k < 4u; k++) {
        switch (order >> (2u * k)) & 3u {
            case 0u: {
                if brightness != 1.0 {
                    x = clamp(x * brightness, vec4<f32>(0.0), vec4<f32>(1.0));
                }
            }
            case 1u: {
                if contrast != 1.0 {
                    x = clamp((x - p.pivot) * contrast + p.pivot, vec4<f32>(0.0), vec4<f32>(1.0));
                }
            }
            case 2u: {
                if rgb && saturation != 1.0 {
                    let g = luma(x.rgb);
                    x = vec4<f32>(clamp(mix(vec3<f32>(g), x.rgb, saturation), vec3<f32>(0.0), vec3<f32>(1.0)), 0.0);
                }
            }
            default: {
                if rgb && hue != 0.0 {
                    x = vec4<f32>(rotate_hue(x.rgb, hue), 0.0);
                }
            }
        }
    }
    if rgb && grayscale != 0u {
        x = vec4<f32>(vec3<f32>(luma(x.rgb)), 0.0);
    }

    for (var c = 0u; c < p.channels; c++) {
        let e = i * p.channels + c;
        var y = x[c];
        if p.noise_std > 0.0 {
            // Box-Muller from two hashed uniforms.
            let key = hash(p.seed ^ hash(e));
            let r = sqrt(-2.0 * log(uniform01(key)));
            y = y + p.noise_std * r * cos(6.2831853 * uniform01(key ^ 0x9e3779b9u));
        }
        out[e] = (y - p.mean[c]) * p.inv_std[c];
    }
}
