//! The GPU context: adapter choice, device, buffers, cached pipelines and the command recorder.
//!
//! Every kernel launch goes through [`Gpu::dispatch`], which only *records* the dispatch. Nothing
//! reaches the GPU until [`Gpu::flush`] (or a read, which flushes) submits all recorded work in one
//! command buffer, so a whole training step — forward, backward, update — is one submission.
//!
//! Binding model (the same for every kernel, so layouts are created once):
//! - group 0, binding 0: the kernel's small parameter struct, a uniform read at a dynamic offset in
//!   one per-flush "parameter ring". Each dispatch gets its own slot, written with one
//!   `write_buffer` just before the submit; a uniform is never rewritten between two dispatches of one
//!   submission (`write_buffer` runs on the queue timeline, not in encoder order).
//! - group 1, bindings 0..n: storage buffers, all `read_write`. Tensors are sub-ranges of a few large
//!   arena buffers, and wgpu forbids one buffer being read-only and writable in the same dispatch,
//!   while several writable bindings of one buffer are allowed. Declaring every binding `read_write`
//!   is what lets inputs and outputs share an arena.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::error::{Error, Result};

pub mod glsl;

/// Size of one parameter slot in the ring; every kernel's parameter struct fits in it.
pub const PARAM_BYTES: u64 = 256;
/// Dispatches per submission that profile mode times (two timestamps each, within the 4096
/// queries a set may hold).
const PROFILE_MAX_DISPATCHES: u32 = 2048;
/// Most storage bindings any kernel uses (kept at 8 so the GL backend's limits are never hit).
pub const MAX_BINDINGS: usize = 8;

/// A compute kernel: one entry point of one WGSL file in `shaders/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Kernel {
    /// File name, used as the cache key for the shader module.
    pub file: &'static str,
    pub source: &'static str,
    pub entry: &'static str,
    /// A build for wgpu's GL backend with 64-bit storage words, run as GLSL where the driver
    /// has them (see [`glsl`]); elsewhere, or if `None`, GL runs `source`.
    pub gl_source: Option<&'static str>,
    /// Number of storage buffers in group 1.
    pub buffers: usize,
    /// Bindings (bit i: binding i) that hold u32 words rather than f32 values (indices, packed
    /// pixels, flags): the per-dispatch finite checks of [`Gpu::begin_finite_checks`] skip them.
    pub words: u8,
}

/// Declares a [`Kernel`] whose source is `shaders/<file>` embedded at compile time; `words = mask`
/// marks the bindings that hold u32 words (see [`Kernel::words`]).
#[macro_export]
macro_rules! kernel {
    ($file:literal, $entry:literal, $buffers:literal) => {
        $crate::kernel!($file, $entry, $buffers, words = 0)
    };
    ($file:literal, $entry:literal, $buffers:literal, words = $words:expr) => {
        $crate::gpu::Kernel {
            file: $file,
            source: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $file)),
            gl_source: None,
            entry: $entry,
            buffers: $buffers,
            words: $words,
        }
    };
}

/// Index of a buffer in the context's registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufferId(pub usize);

/// A range of 32-bit words inside one registered buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Region {
    pub buffer: BufferId,
    /// Offset in bytes, a multiple of the adapter's storage offset alignment.
    pub offset: u64,
    /// Length in 32-bit words.
    pub len: usize,
}

impl Region {
    pub fn bytes(&self) -> u64 {
        self.len as u64 * 4
    }

    /// The region grown to a whole number of vec4s, for binding a short operand (a scalar, a
    /// column of `rows` values) as `array<vec4<f32>>`. Safe to read: a bindable region starts at a
    /// multiple of the offset alignment (at least 16 bytes) and buffer sizes are multiples of 16
    /// bytes, so the added words are padding or other data, never past the buffer.
    pub fn padded_to_vec4(&self) -> Region {
        Region {
            len: self.len.max(1).next_multiple_of(4),
            ..*self
        }
    }

    /// A sub-range of `len` words starting `start` words in. `start` words must keep the storage
    /// offset alignment if the result is bound to a kernel.
    pub fn slice(&self, start: usize, len: usize) -> Region {
        assert!(start + len <= self.len, "region slice out of range");
        Region {
            buffer: self.buffer,
            offset: self.offset + start as u64 * 4,
            len,
        }
    }
}

/// Counts of work sent to the GPU, for benches and for the "one submission per step" check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub dispatches: u64,
    pub submissions: u64,
    pub buffers_created: u64,
    pub bytes_allocated: u64,
}

impl std::ops::Sub for Counters {
    type Output = Counters;
    fn sub(self, o: Counters) -> Counters {
        Counters {
            dispatches: self.dispatches - o.dispatches,
            submissions: self.submissions - o.submissions,
            buffers_created: self.buffers_created - o.buffers_created,
            bytes_allocated: self.bytes_allocated - o.bytes_allocated,
        }
    }
}

/// What the chosen adapter is, for logs and benchmark tables.
#[derive(Debug, Clone)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
}

impl AdapterSummary {
    /// A software rasteriser such as llvmpipe: a few SIMD cores, each running a workgroup as one
    /// thread, where barriers are slow and a few long-running invocations beat many short ones.
    pub fn is_cpu(&self) -> bool {
        self.device_type == "Cpu"
    }
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}, {}", self.name, self.backend, self.device_type)?;
        if !self.driver.is_empty() {
            write!(f, ", {}", self.driver)?;
        }
        write!(f, ")")
    }
}

impl From<&wgpu::AdapterInfo> for AdapterSummary {
    fn from(i: &wgpu::AdapterInfo) -> Self {
        AdapterSummary {
            name: i.name.clone(),
            backend: format!("{:?}", i.backend).to_lowercase(),
            device_type: format!("{:?}", i.device_type),
            driver: format!("{} {}", i.driver, i.driver_info).trim().to_string(),
        }
    }
}

enum Command {
    Dispatch {
        /// For profiles.
        kernel: KernelId,
        pipeline: Arc<wgpu::ComputePipeline>,
        bind_group: Arc<wgpu::BindGroup>,
        param_slot: u32,
        groups: [u32; 3],
    },
    Copy {
        src: Region,
        dst: Region,
    },
    Clear(Region),
}

type BindKey = (usize, Vec<(BufferId, u64, u64)>);

pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter: AdapterSummary,
    pub limits: wgpu::Limits,
    features: wgpu::Features,
    /// Whether kernels' GL builds run as GLSL with 64-bit words ([`glsl`]).
    gl_int64: bool,
    /// Alignment, in bytes, of every region start (storage offsets must be multiples of it).
    pub align: u64,
    buffers: RefCell<Vec<Option<wgpu::Buffer>>>,
    param_layout: wgpu::BindGroupLayout,
    storage_layouts: Vec<wgpu::BindGroupLayout>,
    pipeline_layouts: Vec<wgpu::PipelineLayout>,
    modules: RefCell<HashMap<&'static str, wgpu::ShaderModule>>,
    pipelines: RefCell<HashMap<KernelId, Arc<wgpu::ComputePipeline>>>,
    bind_groups: RefCell<HashMap<BindKey, Arc<wgpu::BindGroup>>>,
    ring: RefCell<Option<(wgpu::Buffer, wgpu::BindGroup, u64)>>,
    params: RefCell<Vec<u8>>,
    commands: RefCell<Vec<Command>>,
    staging: RefCell<Option<wgpu::Buffer>>,
    counters: Cell<Counters>,
    error: Arc<Mutex<Option<String>>>,
    /// Labels of the enclosing [`Gpu::scope`]s, innermost last (kept in check mode only).
    scopes: RefCell<Vec<String>>,
    /// Named regions (parameter tensors, their gradients, optimiser state), for diagnostics.
    names: RefCell<Vec<(Region, String)>>,
    checks: RefCell<Option<Checks>>,
    /// Set while the checks of one command are recorded, so that they are not checked themselves.
    instrumenting: Cell<bool>,
    profile: RefCell<Option<Profiling>>,
}

/// A kernel's `(file, entry)`.
type KernelId = (&'static str, &'static str);

/// The state of profile mode ([`Gpu::begin_profile`]).
#[derive(Default)]
struct Profiling {
    /// Calls and GPU seconds per kernel so far.
    table: BTreeMap<KernelId, (u64, f64)>,
    /// The timestamps of the submission being encoded: the buffer to read them from, and the
    /// kernel of each dispatch.
    pending: Option<(wgpu::Buffer, Vec<KernelId>)>,
}

/// GPU time of one kernel over a profile ([`Gpu::end_profile`]).
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    /// `file::entry`.
    pub kernel: String,
    pub calls: u64,
    pub seconds: f64,
}

/// Flag words per buffer of check results.
const FLAG_CHUNK: usize = 4096;

/// One finite check recorded in check mode: which command, which binding, before or after it.
struct Check {
    command: usize,
    /// The innermost [`Gpu::scope`] (a graph op, an update).
    scope: Option<String>,
    /// The kernel, or "copy".
    kernel: String,
    binding: Option<usize>,
    name: Option<String>,
    before: bool,
}

/// The state of check mode ([`Gpu::begin_finite_checks`]): flag buffers and what each word means.
#[derive(Default)]
struct Checks {
    flags: Vec<Region>,
    checks: Vec<Check>,
    commands: usize,
}

/// Ends a [`Gpu::scope`] when dropped.
pub struct Scope<'a>(Option<&'a Gpu>);

impl Drop for Scope<'_> {
    fn drop(&mut self) {
        if let Some(gpu) = self.0 {
            gpu.scopes.borrow_mut().pop();
        }
    }
}

fn backend_names(b: wgpu::Backends) -> String {
    let mut names = vec![];
    for (flag, name) in [
        (wgpu::Backends::VULKAN, "vulkan"),
        (wgpu::Backends::GL, "gl"),
        (wgpu::Backends::METAL, "metal"),
        (wgpu::Backends::DX12, "dx12"),
        (wgpu::Backends::BROWSER_WEBGPU, "webgpu"),
    ] {
        if b.contains(flag) {
            names.push(name);
        }
    }
    names.join(", ")
}

/// Preference when no adapter is named: real GPUs first, then native APIs over GL.
fn adapter_rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let ty = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    };
    let api = u8::from(info.backend == wgpu::Backend::Gl);
    (ty, api)
}

/// A shader module of GLSL source (the device has `PASSTHROUGH_SHADERS`).
fn glsl_module(device: &wgpu::Device, label: &str, source: String) -> wgpu::ShaderModule {
    let entry = wgpu::PassthroughShaderEntryPoint {
        name: "main".into(),
        workgroup_size: (0, 0, 0),
    };
    // SAFETY: wgpu passes the source to the GL driver as it is, which compiles it or reports an
    // error; the caller's error scope catches the error.
    unsafe {
        device.create_shader_module_passthrough(wgpu::ShaderModuleDescriptorPassthrough {
            label: Some(label),
            entry_points: vec![entry].into(),
            glsl: Some(source.into()),
            ..Default::default()
        })
    }
}

/// Whether the GL driver compiles GLSL with 64-bit words ([`glsl::probe`]) into a pipeline of
/// `layout` (two storage bindings).
fn gl_int64_compiles(device: &wgpu::Device, layout: &wgpu::BindGroupLayout) -> bool {
    let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: None,
        bind_group_layouts: &[Some(layout)],
        immediate_size: 0,
    });
    let (_pipeline, error) = first_error(device, || {
        let module = glsl_module(device, "int64 probe", glsl::probe());
        device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("int64 probe"),
            layout: Some(&layout),
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        })
    });
    error.is_none()
}

/// `f()` and the first validation or internal error it raised. (wgpu files a shader that the
/// driver fails to compile, as GL reports a GLSL one, under internal errors.)
fn first_error<T>(device: &wgpu::Device, f: impl FnOnce() -> T) -> (T, Option<wgpu::Error>) {
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let internal = device.push_error_scope(wgpu::ErrorFilter::Internal);
    let out = f();
    let internal = pollster::block_on(internal.pop());
    let validation = pollster::block_on(validation.pop());
    (out, validation.or(internal))
}

/// All adapters visible through the backends selected by `WGPU_BACKEND` (all by default).
pub fn list_adapters() -> (wgpu::Backends, Vec<wgpu::Adapter>) {
    let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    let instance = wgpu::Instance::new(desc);
    let adapters = pollster::block_on(instance.enumerate_adapters(backends));
    (backends, adapters)
}

impl Gpu {
    /// Opens the adapter chosen by `WGPU_BACKEND` / `WGPU_ADAPTER_NAME`, or the best one available.
    pub fn new() -> Result<Gpu> {
        let (backends, adapters) = list_adapters();
        let tried = backend_names(backends);
        let names: Vec<String> = adapters
            .iter()
            .map(|a| AdapterSummary::from(&a.get_info()).to_string())
            .collect();
        let adapter = match std::env::var("WGPU_ADAPTER_NAME") {
            Ok(want) => {
                let want = want.to_lowercase();
                adapters
                    .into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&want))
                    .ok_or_else(|| Error::NoAdapter {
                        tried: tried.clone(),
                        hint: format!(
                            "WGPU_ADAPTER_NAME={want:?} matches none of the adapters found: [{}].",
                            names.join("; ")
                        ),
                    })?
            }
            Err(_) => adapters
                .into_iter()
                .min_by_key(|a| adapter_rank(&a.get_info()))
                .ok_or_else(|| Error::NoAdapter {
                    tried,
                    hint: "The system reported no adapter for these backends.".into(),
                })?,
        };
        Gpu::from_adapter(adapter)
    }

    pub fn from_adapter(adapter: wgpu::Adapter) -> Result<Gpu> {
        let info = AdapterSummary::from(&adapter.get_info());
        let limits = adapter.limits();
        // Optional features, requested where the adapter has them. GLSL passthrough is for
        // kernels' GL builds with 64-bit words (see `glsl`).
        let gl = adapter.get_info().backend == wgpu::Backend::Gl;
        let wanted = wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::SHADER_INT64
            | if gl {
                wgpu::Features::PASSTHROUGH_SHADERS
            } else {
                wgpu::Features::empty()
            };
        let required_features = adapter.features() & wanted;
        let desc = wgpu::DeviceDescriptor {
            label: Some("contrastive"),
            required_features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) =
            pollster::block_on(adapter.request_device(&desc)).map_err(|e| Error::Device {
                adapter: info.to_string(),
                reason: e.to_string(),
            })?;
        // wgpu's default handler panics; keep the first error and report it at the next flush.
        let error = Arc::new(Mutex::new(None::<String>));
        let sink = error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = sink.lock().unwrap();
            if slot.is_none() {
                *slot = Some(e.to_string());
            }
        }));

        let uniform_entry = wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: true,
                min_binding_size: None,
            },
            count: None,
        };
        let param_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("params"),
            entries: &[uniform_entry],
        });
        let storage_layouts: Vec<_> = (0..=MAX_BINDINGS)
            .map(|n| {
                let entries: Vec<_> = (0..n as u32)
                    .map(|binding| wgpu::BindGroupLayoutEntry {
                        binding,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Storage { read_only: false },
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                        count: None,
                    })
                    .collect();
                device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some("storage"),
                    entries: &entries,
                })
            })
            .collect();
        let pipeline_layouts = storage_layouts
            .iter()
            .map(|s| {
                device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: None,
                    bind_group_layouts: &[Some(&param_layout), Some(s)],
                    immediate_size: 0,
                })
            })
            .collect();
        let align = (limits.min_storage_buffer_offset_alignment as u64).max(16);
        let gl_int64 = required_features.contains(wgpu::Features::PASSTHROUGH_SHADERS)
            && gl_int64_compiles(&device, &storage_layouts[2]);
        Ok(Gpu {
            device,
            queue,
            adapter: info,
            limits,
            features: required_features,
            gl_int64,
            align,
            buffers: RefCell::new(vec![]),
            param_layout,
            storage_layouts,
            pipeline_layouts,
            modules: RefCell::new(HashMap::new()),
            pipelines: RefCell::new(HashMap::new()),
            bind_groups: RefCell::new(HashMap::new()),
            ring: RefCell::new(None),
            params: RefCell::new(vec![]),
            commands: RefCell::new(vec![]),
            staging: RefCell::new(None),
            counters: Cell::new(Counters::default()),
            error,
            scopes: RefCell::new(vec![]),
            names: RefCell::new(vec![]),
            checks: RefCell::new(None),
            instrumenting: Cell::new(false),
            profile: RefCell::new(None),
        })
    }

    pub fn counters(&self) -> Counters {
        self.counters.get()
    }

    fn count(&self, f: impl FnOnce(&mut Counters)) {
        let mut c = self.counters.get();
        f(&mut c);
        self.counters.set(c);
    }

    pub fn has_timestamps(&self) -> bool {
        self.features.contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Whether kernels may use 64-bit words: in WGSL (Vulkan on llvmpipe has them, wgpu's GL
    /// backend does not), or on GL through GLSL ([`glsl`]).
    pub fn has_int64(&self) -> bool {
        self.features.contains(wgpu::Features::SHADER_INT64) || self.gl_int64
    }

    /// Largest single binding in bytes: no tensor may be bigger.
    pub fn max_binding(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    /// Creates a zero-filled storage buffer of `bytes` and registers it. `what` names it in errors.
    pub fn create_buffer(&self, bytes: u64, what: &str) -> Result<BufferId> {
        let bytes = bytes.max(16).next_multiple_of(16);
        if bytes > self.limits.max_buffer_size {
            return Err(Error::OutOfMemory {
                what: what.into(),
                needed: bytes,
                limit: self.limits.max_buffer_size,
                advice: " (the adapter's max_buffer_size)".into(),
            });
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::OutOfMemory {
                what: what.into(),
                needed: bytes,
                limit: self.counters().bytes_allocated,
                advice: format!(
                    " more than the {} already allocated ({e})",
                    self.counters().bytes_allocated
                ),
            });
        }
        self.count(|c| {
            c.buffers_created += 1;
            c.bytes_allocated += bytes;
        });
        let mut buffers = self.buffers.borrow_mut();
        buffers.push(Some(buffer));
        Ok(BufferId(buffers.len() - 1))
    }

    /// Releases a buffer. Work already recorded that uses it is flushed first.
    pub fn free(&self, id: BufferId) -> Result<()> {
        self.flush()?;
        self.bind_groups
            .borrow_mut()
            .retain(|k, _| k.1.iter().all(|b| b.0 != id));
        if let Some(b) = self.buffers.borrow_mut()[id.0].take() {
            self.count(|c| c.bytes_allocated -= b.size());
        }
        Ok(())
    }

    fn buffer(&self, id: BufferId) -> std::cell::Ref<'_, wgpu::Buffer> {
        std::cell::Ref::map(self.buffers.borrow(), |b| {
            b[id.0].as_ref().expect("use of a freed buffer")
        })
    }

    fn pipeline(&self, k: &Kernel) -> Result<Arc<wgpu::ComputePipeline>> {
        if let Some(p) = self.pipelines.borrow().get(&(k.file, k.entry)) {
            return Ok(p.clone());
        }
        let fail = |e: String| Error::Gpu(format!("kernel {}::{}: {e}", k.file, k.entry));
        // A GLSL module holds one entry point, `main`, and serves one pipeline.
        let glsl = match k.gl_source.filter(|_| self.gl_int64) {
            Some(source) => Some(glsl::translate(source, k.entry).map_err(fail)?),
            None => None,
        };
        let mut modules = self.modules.borrow_mut();
        let (pipeline, error) = first_error(&self.device, || {
            let glsl_module = glsl.map(|source| glsl_module(&self.device, k.file, source));
            let (module, entry) = match &glsl_module {
                Some(module) => (module, "main"),
                None => (
                    &*modules.entry(k.file).or_insert_with(|| {
                        self.device
                            .create_shader_module(wgpu::ShaderModuleDescriptor {
                                label: Some(k.file),
                                source: wgpu::ShaderSource::Wgsl(k.source.into()),
                            })
                    }),
                    k.entry,
                ),
            };
            self.device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(k.entry),
                    layout: Some(&self.pipeline_layouts[k.buffers]),
                    module,
                    entry_point: Some(entry),
                    compilation_options: Default::default(),
                    cache: None,
                })
        });
        if let Some(e) = error {
            modules.remove(k.file);
            return Err(fail(e.to_string()));
        }
        let pipeline = Arc::new(pipeline);
        self.pipelines
            .borrow_mut()
            .insert((k.file, k.entry), pipeline.clone());
        Ok(pipeline)
    }

    fn bind_group(&self, regions: &[Region]) -> Arc<wgpu::BindGroup> {
        let key: BindKey = (
            regions.len(),
            regions
                .iter()
                .map(|r| (r.buffer, r.offset, r.bytes().max(4)))
                .collect(),
        );
        if let Some(bg) = self.bind_groups.borrow().get(&key) {
            return bg.clone();
        }
        let buffers: Vec<_> = regions.iter().map(|r| self.buffer(r.buffer)).collect();
        let entries: Vec<_> = regions
            .iter()
            .zip(&buffers)
            .enumerate()
            .map(|(i, (r, buffer))| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer,
                    offset: r.offset,
                    size: std::num::NonZeroU64::new(r.bytes().max(4)),
                }),
            })
            .collect();
        let bg = Arc::new(self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &self.storage_layouts[regions.len()],
            entries: &entries,
        }));
        let mut cache = self.bind_groups.borrow_mut();
        // Shapes that change every call (evaluation sweeps) must not grow the cache without bound.
        if cache.len() > 20_000 {
            cache.clear();
        }
        cache.insert(key, bg.clone());
        bg
    }

    /// Records one dispatch of `kernel` with `params` in its uniform slot and `regions` bound to
    /// group 1 in order. Runs at the next [`Gpu::flush`]. In check mode the f32 bindings are
    /// checked for non-finite values before and after it.
    pub fn dispatch<P: bytemuck::Pod>(
        &self,
        kernel: &Kernel,
        params: &P,
        regions: &[Region],
        groups: [u32; 3],
    ) -> Result<()> {
        if !self.checking() {
            return self.record(kernel, params, regions, groups);
        }
        let what = format!("{}::{}", kernel.file, kernel.entry);
        let command = self.next_command();
        let checked: Vec<(usize, Region)> = regions
            .iter()
            .copied()
            .enumerate()
            .filter(|(i, _)| kernel.words & (1 << i) == 0)
            .collect();
        for &(i, r) in &checked {
            self.check(r, command, &what, Some(i), true)?;
        }
        self.record(kernel, params, regions, groups)?;
        for &(i, r) in &checked {
            self.check(r, command, &what, Some(i), false)?;
        }
        Ok(())
    }

    /// Names a region in diagnostics (a parameter tensor, its gradient, optimiser state).
    pub fn name_region(&self, r: Region, name: impl Into<String>) {
        self.names.borrow_mut().push((r, name.into()));
    }

    /// Labels the commands recorded until the returned value is dropped, for the diagnostics of
    /// check mode (a graph op, a method's update). Free outside check mode: `label` is not called.
    pub fn scope(&self, label: impl FnOnce() -> String) -> Scope<'_> {
        if !self.checking() {
            return Scope(None);
        }
        self.scopes.borrow_mut().push(label());
        Scope(Some(self))
    }

    fn checking(&self) -> bool {
        !self.instrumenting.get() && self.checks.borrow().is_some()
    }

    fn next_command(&self) -> usize {
        let mut checks = self.checks.borrow_mut();
        let c = checks.as_mut().expect("check mode");
        c.commands += 1;
        c.commands
    }

    /// Starts check mode: until [`Gpu::end_finite_checks`], every recorded dispatch and copy is
    /// surrounded by scans of its f32 regions for NaN and infinity, one flag word each. Slow (a
    /// diagnostic, not for training): it finds the first command that wrote a non-finite value.
    pub fn begin_finite_checks(&self) -> Result<()> {
        self.flush()?;
        *self.checks.borrow_mut() = Some(Checks::default());
        Ok(())
    }

    /// Runs the recorded work, ends check mode and describes the first check that found a
    /// non-finite value, if any.
    pub fn end_finite_checks(&self) -> Result<Option<String>> {
        let Some(c) = self.checks.borrow_mut().take() else {
            return Ok(None);
        };
        let mut first = None;
        let mut result = Ok(());
        for (k, &flags) in c.flags.iter().enumerate() {
            if first.is_some() {
                break;
            }
            match self.read::<u32>(flags) {
                Ok(words) => {
                    first = words
                        .iter()
                        .position(|&w| w != 0)
                        .map(|i| k * FLAG_CHUNK + i)
                }
                Err(e) => result = Err(e),
            }
        }
        for flags in &c.flags {
            self.free(flags.buffer)?;
        }
        result?;
        Ok(first.map(|i| {
            let ch = &c.checks[i];
            let who = ch.scope.as_ref().unwrap_or(&ch.kernel);
            let mut place = vec![];
            if ch.scope.is_some() {
                place.push(ch.kernel.clone());
            }
            if let Some(b) = ch.binding {
                let name = ch
                    .name
                    .as_ref()
                    .map_or(String::new(), |n| format!(" = {n}"));
                place.push(format!("binding {b}{name}"));
            } else if let Some(n) = &ch.name {
                place.push(format!("into {n}"));
            }
            place.push(format!("command {} of the step", ch.command));
            let place = place.join(", ");
            if ch.before {
                format!(
                    "first non-finite value read by {who} ({place}): it was there before the \
                     step, not written by any of its commands"
                )
            } else {
                format!("first non-finite value written by {who} ({place})")
            }
        }))
    }

    /// Records scans of `r` into fresh flag words: one per named tensor inside it (so that a
    /// whole parameter store is reported by tensor), then one of the whole region.
    fn check(
        &self,
        r: Region,
        command: usize,
        what: &str,
        binding: Option<usize>,
        before: bool,
    ) -> Result<()> {
        let (start, end) = (r.offset, r.offset + r.bytes());
        let mut pieces: Vec<(Region, Option<String>)> = vec![];
        let mut whole_name = None;
        for (n, name) in self.names.borrow().iter() {
            if n.buffer != r.buffer {
                continue;
            }
            let (ns, ne) = (n.offset, n.offset + n.bytes());
            if ns <= start && end <= ne {
                whole_name = Some(name.clone());
            } else if start <= ns && ne <= end {
                pieces.push((*n, Some(name.clone())));
            }
        }
        pieces.push((r, whole_name));
        self.instrumenting.set(true);
        let result = pieces.into_iter().try_for_each(|(piece, name)| {
            let (flags, slot) = self.flag_slot()?;
            let mut checks = self.checks.borrow_mut();
            let c = checks.as_mut().expect("check mode");
            c.checks.push(Check {
                command,
                scope: self.scopes.borrow().last().cloned(),
                kernel: what.to_string(),
                binding,
                name,
                before,
            });
            drop(checks);
            crate::kernels::guard::check_finite(self, piece, flags, slot, false)
        });
        self.instrumenting.set(false);
        result
    }

    /// The flag buffer and word of the next check, adding a buffer when the last one is full.
    fn flag_slot(&self) -> Result<(Region, usize)> {
        let n = self.checks.borrow().as_ref().map_or(0, |c| c.checks.len());
        if n / FLAG_CHUNK >= self.checks.borrow().as_ref().map_or(0, |c| c.flags.len()) {
            let region = Region {
                buffer: self.create_buffer(FLAG_CHUNK as u64 * 4, "finite checks")?,
                offset: 0,
                len: FLAG_CHUNK,
            };
            if let Some(c) = self.checks.borrow_mut().as_mut() {
                c.flags.push(region);
            }
        }
        let checks = self.checks.borrow();
        let c = checks.as_ref().expect("check mode");
        Ok((c.flags[n / FLAG_CHUNK], n % FLAG_CHUNK))
    }

    fn record<P: bytemuck::Pod>(
        &self,
        kernel: &Kernel,
        params: &P,
        regions: &[Region],
        groups: [u32; 3],
    ) -> Result<()> {
        assert_eq!(
            regions.len(),
            kernel.buffers,
            "{}::{} binds {} buffers",
            kernel.file,
            kernel.entry,
            kernel.buffers
        );
        let bytes = bytemuck::bytes_of(params);
        assert!(
            bytes.len() as u64 <= PARAM_BYTES,
            "parameter struct too large"
        );
        for r in regions {
            if r.bytes() > self.max_binding() {
                return Err(Error::OutOfMemory {
                    what: format!("a tensor bound to {}", kernel.entry),
                    needed: r.bytes(),
                    limit: self.max_binding(),
                    advice: " (max_storage_buffer_binding_size); use a smaller batch".into(),
                });
            }
        }
        if groups.contains(&0) {
            return Ok(());
        }
        let max = self.limits.max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max) {
            return Err(Error::Gpu(format!(
                "{}::{} needs {groups:?} workgroups; the adapter allows {max} per dimension",
                kernel.file, kernel.entry
            )));
        }
        let pipeline = self.pipeline(kernel)?;
        let bind_group = self.bind_group(regions);
        let mut ring = self.params.borrow_mut();
        let slot = (ring.len() as u64 / PARAM_BYTES) as u32;
        ring.extend_from_slice(bytes);
        let padded = ring.len().next_multiple_of(PARAM_BYTES as usize);
        ring.resize(padded, 0);
        self.commands.borrow_mut().push(Command::Dispatch {
            kernel: (kernel.file, kernel.entry),
            pipeline,
            bind_group,
            param_slot: slot,
            groups,
        });
        Ok(())
    }

    /// Records a copy between two regions of equal length. Within one buffer (which
    /// `copy_buffer_to_buffer` forbids) it is a small kernel over the whole buffer.
    pub fn copy(&self, src: Region, dst: Region) -> Result<()> {
        assert_eq!(
            src.len, dst.len,
            "copy between regions of different lengths"
        );
        if self.checking() {
            let what = "copy".to_string();
            let command = self.next_command();
            self.instrumenting.set(true);
            let copied = self.copy(src, dst);
            self.instrumenting.set(false);
            copied?;
            return self.check(dst, command, &what, None, false);
        }
        if src.buffer != dst.buffer {
            self.commands.borrow_mut().push(Command::Copy { src, dst });
            return Ok(());
        }
        assert!(
            src.offset + src.bytes() <= dst.offset || dst.offset + dst.bytes() <= src.offset,
            "overlapping copy"
        );
        const COPY_WITHIN: Kernel = crate::kernel!("copy.wgsl", "copy_within", 1, words = 1);
        #[repr(C)]
        #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
        struct Params {
            n: u32,
            src: u32,
            dst: u32,
            _pad: u32,
        }
        let whole = Region {
            buffer: src.buffer,
            offset: 0,
            len: (self.buffer(src.buffer).size() / 4) as usize,
        };
        let params = Params {
            n: src.len as u32,
            src: (src.offset / 4) as u32,
            dst: (dst.offset / 4) as u32,
            _pad: 0,
        };
        let groups = (src.len as u32).div_ceil(256);
        let grid = [groups.min(65535), groups.div_ceil(65535), 1];
        self.dispatch(&COPY_WITHIN, &params, &[whole], grid)
    }

    /// Records zero-filling a region.
    pub fn clear(&self, r: Region) {
        self.commands.borrow_mut().push(Command::Clear(r));
    }

    /// Number of commands recorded and not yet submitted.
    pub fn pending(&self) -> usize {
        self.commands.borrow().len()
    }

    /// Writes host data into a region. Recorded work that has not been submitted is flushed first,
    /// because `write_buffer` lands before every command of the next submission.
    pub fn upload<T: bytemuck::Pod>(&self, dst: Region, data: &[T]) -> Result<()> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        assert_eq!(
            bytes.len() as u64,
            dst.bytes(),
            "upload size differs from region"
        );
        if self.pending() > 0 {
            self.flush()?;
        }
        self.queue
            .write_buffer(&self.buffer(dst.buffer), dst.offset, bytes);
        Ok(())
    }

    fn ensure_ring(&self, bytes: u64) {
        let mut ring = self.ring.borrow_mut();
        if ring.as_ref().is_some_and(|r| r.2 >= bytes) {
            return;
        }
        let size = bytes.next_power_of_two().max(64 * 1024);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("parameter ring"),
            size,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let bg = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("parameter ring"),
            layout: &self.param_layout,
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &buffer,
                    offset: 0,
                    size: std::num::NonZeroU64::new(PARAM_BYTES),
                }),
            }],
        });
        self.count(|c| {
            c.buffers_created += 1;
            c.bytes_allocated += size;
        });
        *ring = Some((buffer, bg, size));
    }

    fn encode(&self, timer: Option<&wgpu::QuerySet>) -> (wgpu::CommandEncoder, u32) {
        let commands = std::mem::take(&mut *self.commands.borrow_mut());
        let params = std::mem::take(&mut *self.params.borrow_mut());
        if !params.is_empty() {
            self.ensure_ring(params.len() as u64);
        }
        let ring = self.ring.borrow();
        if let Some((buf, _, _)) = ring.as_ref().filter(|_| !params.is_empty()) {
            self.queue.write_buffer(buf, 0, &params);
        }
        let buffers = self.buffers.borrow();
        let buf = |id: BufferId| buffers[id.0].as_ref().expect("use of a freed buffer");
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        // In profile mode (and not already timed per pass) every dispatch gets a pass of its own
        // with timestamps around it, as many as one query set holds.
        let profiled = if timer.is_none() && self.profile.borrow().is_some() {
            let n = commands
                .iter()
                .filter(|c| matches!(c, Command::Dispatch { .. }))
                .count()
                .min(PROFILE_MAX_DISPATCHES as usize) as u32;
            (n > 0).then(|| {
                self.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("profile"),
                    ty: wgpu::QueryType::Timestamp,
                    count: 2 * n,
                })
            })
        } else {
            None
        };
        let timer = timer.or(profiled.as_ref());
        let mut kernels = vec![];
        let mut passes = 0u32;
        let mut dispatches = 0u64;
        let mut i = 0;
        while i < commands.len() {
            match &commands[i] {
                Command::Copy { src, dst } => {
                    enc.copy_buffer_to_buffer(
                        buf(src.buffer),
                        src.offset,
                        buf(dst.buffer),
                        dst.offset,
                        src.bytes(),
                    );
                    i += 1;
                }
                Command::Clear(r) => {
                    enc.clear_buffer(buf(r.buffer), r.offset, Some(r.bytes()));
                    i += 1;
                }
                Command::Dispatch { .. } => {
                    let timestamp_writes = timer.filter(|q| passes * 2 + 1 < q.count()).map(|q| {
                        wgpu::ComputePassTimestampWrites {
                            query_set: q,
                            beginning_of_pass_write_index: Some(passes * 2),
                            end_of_pass_write_index: Some(passes * 2 + 1),
                        }
                    });
                    passes += 1;
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: None,
                        timestamp_writes,
                    });
                    let (_, ring_bg, _) = ring.as_ref().expect("dispatch without parameter ring");
                    while let Some(Command::Dispatch {
                        kernel,
                        pipeline,
                        bind_group,
                        param_slot,
                        groups,
                    }) = commands.get(i)
                    {
                        pass.set_pipeline(pipeline);
                        pass.set_bind_group(0, ring_bg, &[*param_slot * PARAM_BYTES as u32]);
                        pass.set_bind_group(1, Some(&**bind_group), &[]);
                        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                        dispatches += 1;
                        i += 1;
                        if profiled.is_some() {
                            kernels.push(*kernel);
                            break;
                        }
                    }
                }
            }
        }
        self.count(|c| c.dispatches += dispatches);
        if let Some(qs) = profiled {
            kernels.truncate(qs.count() as usize / 2);
            let bytes = kernels.len() as u64 * 16;
            let (resolve, read) = self.timestamp_buffers(bytes);
            enc.resolve_query_set(&qs, 0..2 * kernels.len() as u32, &resolve, 0);
            enc.copy_buffer_to_buffer(&resolve, 0, &read, 0, bytes);
            if let Some(p) = self.profile.borrow_mut().as_mut() {
                p.pending = Some((read, kernels));
            }
        }
        (enc, passes)
    }

    /// A query-resolve buffer and a mappable copy of it, `bytes` long.
    fn timestamp_buffers(&self, bytes: u64) -> (wgpu::Buffer, wgpu::Buffer) {
        let buffer = |label, usage| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage,
                mapped_at_creation: false,
            })
        };
        (
            buffer(
                "timestamps",
                wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            ),
            buffer(
                "timestamps read",
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            ),
        )
    }

    /// Starts profile mode: until [`Gpu::end_profile`], every submission times each of its
    /// dispatches (in a compute pass of its own, then waits for the result). Needs timestamp
    /// queries; slows the work down, so the times are for comparing kernels, not for throughput.
    pub fn begin_profile(&self) -> Result<()> {
        if !self.has_timestamps() {
            return Err(Error::Gpu(format!(
                "profiling needs timestamp queries, which {} does not offer",
                self.adapter
            )));
        }
        self.flush()?;
        *self.profile.borrow_mut() = Some(Profiling::default());
        Ok(())
    }

    /// Runs the recorded work, ends profile mode and returns the GPU time per kernel, longest
    /// first.
    pub fn end_profile(&self) -> Result<Vec<KernelTime>> {
        self.sync()?;
        let profile = self.profile.borrow_mut().take().unwrap_or_default();
        let mut out: Vec<KernelTime> = profile
            .table
            .into_iter()
            .map(|((file, entry), (calls, seconds))| KernelTime {
                kernel: format!("{file}::{entry}"),
                calls,
                seconds,
            })
            .collect();
        out.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        Ok(out)
    }

    fn submit(&self, enc: wgpu::CommandEncoder) -> Result<wgpu::SubmissionIndex> {
        let index = self.queue.submit([enc.finish()]);
        self.count(|c| c.submissions += 1);
        self.check_error()?;
        let pending = self
            .profile
            .borrow_mut()
            .as_mut()
            .and_then(|p| p.pending.take());
        if let Some((read, kernels)) = pending {
            self.wait(index.clone())?;
            let ticks: Vec<u64> = self.map_read(&read, read.size())?;
            let period = self.queue.get_timestamp_period() as f64 * 1e-9;
            if let Some(p) = self.profile.borrow_mut().as_mut() {
                for (k, t) in kernels.into_iter().zip(ticks.chunks(2)) {
                    let e = p.table.entry(k).or_default();
                    e.0 += 1;
                    e.1 += t[1].saturating_sub(t[0]) as f64 * period;
                }
            }
        }
        Ok(index)
    }

    fn check_error(&self) -> Result<()> {
        match self.error.lock().unwrap().take() {
            Some(e) => Err(Error::Gpu(e)),
            None => Ok(()),
        }
    }

    fn wait(&self, index: wgpu::SubmissionIndex) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(index),
                timeout: None,
            })
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        self.check_error()
    }

    /// Submits everything recorded so far as one command buffer (no-op when nothing is pending).
    pub fn flush(&self) -> Result<()> {
        if self.pending() == 0 {
            return Ok(());
        }
        let (enc, _) = self.encode(None);
        self.submit(enc)?;
        Ok(())
    }

    /// Submits the recorded work and blocks until the GPU has finished it.
    pub fn sync(&self) -> Result<()> {
        let (enc, _) = self.encode(None);
        let index = self.submit(enc)?;
        self.wait(index)
    }

    /// Submits the recorded work, waits, and returns the GPU time it took in seconds: the sum of
    /// per-pass timestamps where the adapter has them, otherwise the wall time of submit + wait.
    pub fn sync_timed(&self) -> Result<f64> {
        if !self.has_timestamps() {
            let t = Instant::now();
            self.sync()?;
            return Ok(t.elapsed().as_secs_f64());
        }
        const MAX_PASSES: u32 = 64;
        let qs = self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("timer"),
            ty: wgpu::QueryType::Timestamp,
            count: MAX_PASSES * 2,
        });
        let t = Instant::now();
        let (mut enc, passes) = self.encode(Some(&qs));
        if passes > MAX_PASSES || passes == 0 {
            let index = self.submit(enc)?;
            self.wait(index)?;
            return Ok(t.elapsed().as_secs_f64());
        }
        let bytes = passes as u64 * 16;
        let (resolve, read) = self.timestamp_buffers(bytes);
        enc.resolve_query_set(&qs, 0..passes * 2, &resolve, 0);
        enc.copy_buffer_to_buffer(&resolve, 0, &read, 0, bytes);
        let index = self.submit(enc)?;
        self.wait(index)?;
        let ticks: Vec<u64> = self.map_read(&read, bytes)?;
        let period = self.queue.get_timestamp_period() as f64;
        let total: u64 = ticks.chunks(2).map(|p| p[1].saturating_sub(p[0])).sum();
        Ok(total as f64 * period * 1e-9)
    }

    fn map_read<T: bytemuck::Pod>(&self, buf: &wgpu::Buffer, bytes: u64) -> Result<Vec<T>> {
        let (tx, rx) = std::sync::mpsc::channel();
        buf.map_async(wgpu::MapMode::Read, 0..bytes, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for a readback: {e}")))?;
        rx.recv()
            .map_err(|_| Error::Gpu("readback was never completed".into()))?
            .map_err(|e| Error::Gpu(format!("mapping a readback buffer: {e}")))?;
        let out = {
            let view = buf
                .get_mapped_range(0..bytes)
                .map_err(|e| Error::Gpu(format!("reading back: {e}")))?;
            bytemuck::cast_slice(&view).to_vec()
        };
        buf.unmap();
        Ok(out)
    }

    /// Runs all recorded work and returns the contents of `r` (as f32 or u32 words).
    pub fn read<T: bytemuck::Pod>(&self, r: Region) -> Result<Vec<T>> {
        assert_eq!(std::mem::size_of::<T>(), 4, "regions hold 32-bit words");
        let bytes = r.bytes().max(4).next_multiple_of(4);
        {
            let mut staging = self.staging.borrow_mut();
            if staging.as_ref().is_none_or(|s| s.size() < bytes) {
                let size = bytes.next_power_of_two();
                *staging = Some(self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("staging"),
                    size,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }));
                self.count(|c| {
                    c.buffers_created += 1;
                    c.bytes_allocated += size;
                });
            }
        }
        let (mut enc, _) = self.encode(None);
        let staging = self.staging.borrow();
        let staging = staging.as_ref().unwrap();
        if r.len > 0 {
            enc.copy_buffer_to_buffer(&self.buffer(r.buffer), r.offset, staging, 0, r.bytes());
        }
        let index = self.submit(enc)?;
        self.wait(index)?;
        if r.len == 0 {
            return Ok(vec![]);
        }
        self.map_read(staging, r.bytes())
    }
}
