//! Kernel builds that wgpu's GL backend runs as GLSL with 64-bit storage words.
//!
//! llvmpipe loads and stores storage one lane and one component at a time, so a tensor moved in
//! 64-bit components costs about half as much as in 32-bit ones. wgpu offers 64-bit integers to
//! WGSL on Vulkan, Metal and DX12, not on GL, although GL drivers such as llvmpipe have them in
//! GLSL (`GL_ARB_gpu_shader_int64`). So a kernel may carry a second build
//! ([`Kernel::gl_source`](super::Kernel::gl_source)) that declares its 64-bit words as u32 vectors
//! in variables named `*64`. That build is valid WGSL with the same meaning; [`translate`] writes
//! its GLSL with naga, as wgpu itself would, and retypes those variables (`uvec2` to `uint64_t`,
//! `uvec4[2]` to `u64vec4`), converting at each access in memory order, so that only the width of
//! the loads and stores changes.

use naga::back::glsl;

/// The GLSL version the builds are written for, and the extension they need: the probe
/// ([`probe`]) checks both on the device before any kernel uses them.
const HEADER: &str = "#version 450 core\n#extension GL_ARB_gpu_shader_int64 : require\n";

/// A compute shader that compiles where [`translate`]'s output can: it moves 64-bit words of
/// both kinds through the conversions.
pub fn probe() -> String {
    format!(
        "{HEADER}{HELPERS}layout(local_size_x = 1) in;
layout(std430, binding = 0) buffer B {{ uint64_t w2[]; }};
layout(std430, binding = 1) buffer C {{ u64vec4 w8[]; }};
void main() {{
    w2[1] = pack_w2(unpack_w2(w2[0]));
    w8[1] = pack_w8(unpack_w8(w8[0]));
}}
"
    )
}

/// Conversions between the retyped words and the u32 vectors the rest of the GLSL expects, in
/// memory order (the first u32 is the low half). Written with masks and shifts: with GLSL's
/// `unpackUint2x32` and `packUint2x32` instead, llvmpipe ran the 1→32 forward at 0.50–0.58 of the
/// matmul rate instead of 0.85–0.89 (batch 256, 2 cores).
const HELPERS: &str = "uvec2 unpack_w2(uint64_t v) {
    return uvec2(uint(v & 0xffffffffUL), uint(v >> 32));
}
uint64_t pack_w2(uvec2 v) {
    return uint64_t(v.x) | (uint64_t(v.y) << 32);
}
uvec4[2] unpack_w8(u64vec4 v) {
    uvec4 lo = uvec4(v & u64vec4(0xffffffffUL));
    uvec4 hi = uvec4(v >> 32);
    return uvec4[2](uvec4(lo.x, hi.x, lo.y, hi.y), uvec4(lo.z, hi.z, lo.w, hi.w));
}
u64vec4 pack_w8(uvec4 w[2]) {
    u64vec4 lo = u64vec4(uvec4(w[0].x, w[0].z, w[1].x, w[1].z));
    u64vec4 hi = u64vec4(uvec4(w[0].y, w[0].w, w[1].y, w[1].w));
    return lo | (hi << 32);
}
";

/// The GLSL of entry point `entry` of the WGSL `source`, for wgpu's GL backend with the crate's
/// pipeline layouts (one uniform buffer in group 0, storage buffers in group 1), with the
/// variables named `*64` retyped to 64-bit words.
pub fn translate(source: &str, entry: &str) -> Result<String, String> {
    let module = naga::front::wgsl::parse_str(source).map_err(|e| e.emit_to_string(source))?;
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::default(),
    )
    .validate(&module)
    .map_err(|e| e.emit_to_string(source))?;
    // wgpu's GL backend numbers uniform and storage buffers separately, in binding order; the
    // only uniform buffer is group 0's binding 0, so every slot is its binding.
    let mut binding_map = glsl::BindingMap::default();
    let mut words = vec![];
    for (_, var) in module.global_variables.iter() {
        let Some(b) = &var.binding else { continue };
        binding_map.insert(*b, b.binding as u8);
        // naga's name for a bound variable in a compute shader (variables that share a binding
        // share it; an entry point uses one of them).
        let name = format!("_group_{}_binding_{}_cs", b.group, b.binding);
        if var.name.as_deref().is_some_and(|n| n.ends_with("64")) && !words.contains(&name) {
            words.push(name);
        }
    }
    let options = glsl::Options {
        version: glsl::Version::Desktop(450),
        writer_flags: glsl::WriterFlags::empty(),
        binding_map,
        zero_initialize_workgroup_memory: true,
    };
    let pipeline = glsl::PipelineOptions {
        shader_stage: naga::ShaderStage::Compute,
        entry_point: entry.to_string(),
        multiview: None,
    };
    // As wgpu's GL backend: GLSL bounds its own accesses.
    let policies = naga::proc::BoundsCheckPolicies {
        index: naga::proc::BoundsCheckPolicy::Unchecked,
        buffer: naga::proc::BoundsCheckPolicy::Unchecked,
        image_load: naga::proc::BoundsCheckPolicy::Unchecked,
        binding_array: naga::proc::BoundsCheckPolicy::Unchecked,
    };
    let mut out = String::new();
    glsl::Writer::new(&mut out, &module, &info, &options, &pipeline, policies)
        .and_then(|mut w| w.write())
        .map_err(|e| e.to_string())?;
    retype(&out, &words)
}

/// How naga declares a variable to retype (element type, array dimensions), how we declare it,
/// and the suffix of its conversions.
const WORDS: [(&str, &str, &str, &str); 2] = [
    ("uvec2", "[]", "uint64_t", "w2"),
    ("uvec4", "[][2]", "u64vec4", "w8"),
];

/// naga's GLSL with those of `names` that it declares retyped: their declarations, each load
/// wrapped in the unpacking conversion, each store's value in the packing one. naga writes a store
/// as a statement of its own (`name[i] = value;`) and a load as an expression `name[i]`.
fn retype(glsl: &str, names: &[String]) -> Result<String, String> {
    let mut retyped: Vec<(&str, &str)> = vec![];
    let mut body = String::new();
    for line in glsl.lines() {
        let mut line = line.to_string();
        let mut declaration = false;
        for name in names {
            for (naga_type, dims, ours, suffix) in WORDS {
                let from = format!("{naga_type} {name}{dims};");
                if line.contains(&from) {
                    line = line.replace(&from, &format!("{ours} {name}[];"));
                    retyped.push((name, suffix));
                    declaration = true;
                }
            }
        }
        if !declaration {
            for &(name, suffix) in &retyped {
                line = retype_accesses(&line, name, suffix)?;
            }
        }
        body.push_str(&line);
        body.push('\n');
    }
    // naga's header (its #version, then its #extension lines) gives way to ours.
    let (head, rest) = body
        .find("\nlayout(")
        .map(|i| body.split_at(i + 1))
        .ok_or("no layout declaration in naga's GLSL")?;
    let extensions: String = head
        .lines()
        .filter(|l| l.starts_with("#extension"))
        .map(|l| format!("{l}\n"))
        .collect();
    Ok(format!("{HEADER}{extensions}{HELPERS}{rest}"))
}

/// `line` with its accesses to `name` converted (`unpack_<suffix>`, `pack_<suffix>`).
fn retype_accesses(line: &str, name: &str, suffix: &str) -> Result<String, String> {
    let open = format!("{name}[");
    let mut out = String::new();
    let mut rest = line;
    while let Some(at) = rest.find(&open) {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let end = closing_bracket(tail, open.len() - 1)
            .ok_or_else(|| format!("unbalanced brackets in `{line}`"))?;
        let access = &tail[..=end];
        let after = &tail[end + 1..];
        if out.trim().is_empty() && after.starts_with(" = ") {
            // A store: `name[i] = value;`, the value possibly holding loads of its own.
            let value = after[3..]
                .strip_suffix(';')
                .ok_or_else(|| format!("a store that is not one statement: `{line}`"))?;
            let value = retype_accesses(value, name, suffix)?;
            out.push_str(&format!("{access} = pack_{suffix}({value});"));
            return Ok(out);
        }
        out.push_str(&format!("unpack_{suffix}({access})"));
        rest = after;
    }
    out.push_str(rest);
    Ok(out)
}

/// The index of the `]` that closes the `[` at `open` in `s`.
fn closing_bracket(s: &str, open: usize) -> Option<usize> {
    let mut depth = 0;
    for (i, c) in s.char_indices().skip(open) {
        match c {
            '[' => depth += 1,
            ']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}
