//! The GL backend's GLSL builds with 64-bit words (`contrastive::gpu::glsl`): what the
//! translation writes, on any backend, and that CI's GL driver runs them.

mod common;

use contrastive::gpu::glsl::translate;

/// The conv kernels' GL build, as `kernels::conv` assembles it.
fn conv_gl_build(slides: u32) -> String {
    format!(
        "const SLIDES: u32 = {slides}u;\n{}{}{}",
        include_str!("../shaders/conv_u64_gl.wgsl"),
        include_str!("../shaders/conv_words64.wgsl"),
        include_str!("../shaders/conv.wgsl"),
    )
}

/// Occurrences of `pat` in `s`.
fn count(s: &str, pat: &str) -> usize {
    s.matches(pat).count()
}

/// The lines of `glsl` with an access to `name` that is neither a load through `unpack_<suffix>`
/// nor a store through `pack_<suffix>`.
fn unconverted<'a>(glsl: &'a str, name: &str, suffix: &str) -> Vec<&'a str> {
    let access = format!("{name}[");
    let load = format!("unpack_{suffix}({name}[");
    glsl.lines()
        .filter(|l| l.contains(&access) && !l.contains(&format!(" {name}[];")))
        .filter(|l| {
            let store =
                l.trim_start().starts_with(&access) && l.contains(&format!("] = pack_{suffix}("));
            count(l, &access) != count(l, &load) + usize::from(store)
        })
        .collect()
}

#[test]
fn loads_and_stores_of_retyped_words_are_converted() {
    let src = "
        @group(1) @binding(0) var<storage, read_write> a64: array<vec2<u32>>;
        @group(1) @binding(1) var<storage, read_write> b64: array<array<vec4<u32>, 2>>;
        @group(1) @binding(2) var<storage, read_write> c: array<vec2<u32>>;
        @compute @workgroup_size(1)
        fn main() {
            a64[1] = a64[0] + a64[a64[2].x];
            b64[0] = b64[1];
            c[0] = c[1];
        }";
    let glsl = translate(src, "main").unwrap();
    let (a, b, c) = (
        "_group_1_binding_0_cs",
        "_group_1_binding_1_cs",
        "_group_1_binding_2_cs",
    );
    assert!(glsl.starts_with("#version 450 core\n#extension GL_ARB_gpu_shader_int64"));
    assert!(glsl.contains(&format!("uint64_t {a}[];")), "{glsl}");
    assert!(glsl.contains(&format!("u64vec4 {b}[];")), "{glsl}");
    // Not named *64: left as naga wrote it.
    assert!(glsl.contains(&format!("uvec2 {c}[];")), "{glsl}");
    assert_eq!(count(&glsl, &format!("unpack_w2({c}[")), 0, "{glsl}");
    assert!(unconverted(&glsl, a, "w2").is_empty() && unconverted(&glsl, b, "w8").is_empty());
    // Every access but the declaration converted: three loads (one inside another's index) and a
    // store of a, one load and one store of b.
    assert_eq!(count(&glsl, &format!("{a}[")), 5, "{glsl}");
    assert_eq!(count(&glsl, &format!("unpack_w2({a}[")), 3, "{glsl}");
    assert_eq!(count(&glsl, &format!("{a}[1] = pack_w2(")), 1, "{glsl}");
    assert_eq!(count(&glsl, &format!("unpack_w8({b}[")), 1, "{glsl}");
    assert_eq!(count(&glsl, &format!("{b}[0] = pack_w8(")), 1, "{glsl}");
}

#[test]
fn every_conv_word_access_is_converted() {
    let entries: [(&str, &[u32]); 6] = [
        ("forward_direct", &[0, 1, 2]),
        ("weight_grad_direct", &[0, 1, 2]),
        ("input_grad_direct", &[1, 2]),
        ("forward4", &[1]),
        ("input_grad4", &[1]),
        ("weight_grad4", &[1]),
    ];
    for (entry, slides) in entries {
        for &s in slides {
            let glsl = translate(&conv_gl_build(s), entry)
                .unwrap_or_else(|e| panic!("{entry} slides {s}: {e}"));
            let mut retyped = 0;
            for b in 0..4 {
                let name = format!("_group_1_binding_{b}_cs");
                for (ours, suffix) in [("uint64_t", "w2"), ("u64vec4", "w8")] {
                    if glsl.contains(&format!("{ours} {name}[];")) {
                        retyped += 1;
                        assert!(count(&glsl, &format!("{name}[")) >= 2, "{glsl}");
                        let bad = unconverted(&glsl, &name, suffix);
                        assert!(bad.is_empty(), "{entry} slides {s}: {bad:#?}");
                    }
                }
            }
            assert!(
                retyped >= 2,
                "{entry} slides {s}: {retyped} bindings retyped\n{glsl}"
            );
        }
    }
}

/// CI runs the suite on llvmpipe's GL backend, whose GLSL has 64-bit integers: there the conv
/// tests must run the GLSL builds, not fall back to the 32-bit ones.
#[test]
fn llvmpipe_gl_runs_the_64_bit_builds() {
    let gpu = common::gpu();
    if gpu.adapter.backend == "gl" && gpu.adapter.name.contains("llvmpipe") {
        assert!(gpu.has_int64(), "{}: no GLSL int64", gpu.adapter);
    }
}
