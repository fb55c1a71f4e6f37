//! The GPU context: adapter choice, device, buffers and cached pipelines. The other jobs of the
//! context live beside it:
//! - `recorder`: every kernel launch goes through [`Gpu::dispatch`], which only *records* the
//!   dispatch. Nothing reaches the GPU until [`Gpu::flush`] (or a read, which flushes) submits all
//!   recorded work in one command buffer, so a whole training step — forward, backward, update —
//!   is one submission;
//! - `check`: the finite-check mode, which replays a step with every command's f32 regions
//!   scanned for NaN and infinity, through a scan kernel handed in by the layer above;
//! - `profile`: per-kernel GPU times and timed submissions;
//! - [`tune`]: which candidate kernel each (family, shape) runs, measured on this adapter and
//!   cached per adapter and driver ([`Gpu::tuning`]).
//!
//! Nothing here knows a particular kernel family: kernels are values ([`Kernel`]) that the
//! `kernels` layer declares and launches.
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
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

mod check;
mod profile;
mod recorder;
pub mod tune;

pub use check::{FiniteScan, Scope};
pub use profile::KernelTime;

use check::Checks;
use profile::Profiling;
use recorder::Command;
use tune::{Mode, Tuning};

/// Size of one parameter slot in the ring; every kernel's parameter struct fits in it.
pub const PARAM_BYTES: u64 = 256;
/// Most storage bindings any kernel uses (kept at 8 so the GL backend's limits are never hit).
pub const MAX_BINDINGS: usize = 8;

/// A compute kernel: one entry point of one WGSL file in `shaders/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Kernel {
    /// File name, used as the cache key for the shader module.
    pub file: &'static str,
    pub source: &'static str,
    pub entry: &'static str,
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

/// The kind of adapter, as far as launch decisions go: which kernel a family runs, how many
/// invocations share a reduction. Decided once when the [`Gpu`] is created ([`Gpu::kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdapterKind {
    /// A software rasteriser such as llvmpipe: a few SIMD cores, each running a workgroup as one
    /// thread, where barriers are slow and a few long-running invocations beat many short ones.
    Cpu,
    /// Any hardware adapter (discrete, integrated or virtual): many cores, cheap barriers and
    /// workgroup memory.
    Gpu,
}

impl From<wgpu::DeviceType> for AdapterKind {
    fn from(t: wgpu::DeviceType) -> Self {
        match t {
            wgpu::DeviceType::Cpu => AdapterKind::Cpu,
            _ => AdapterKind::Gpu,
        }
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

type BindKey = (usize, Vec<(BufferId, u64, u64)>);

pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter: AdapterSummary,
    pub limits: wgpu::Limits,
    features: wgpu::Features,
    /// Decides launch shapes and kernel choices; fixed when the context is created.
    kind: AdapterKind,
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
    /// The kernel choices in force ([`Gpu::tuning`]).
    tuning: RefCell<Tuning>,
}

/// A kernel's `(file, entry)`.
type KernelId = (&'static str, &'static str);

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

/// `f()` and the first validation or internal error it raised (wgpu files a shader that the
/// driver fails to compile under internal errors).
fn first_error<T>(device: &wgpu::Device, f: impl FnOnce() -> T) -> (T, Option<wgpu::Error>) {
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let internal = device.push_error_scope(wgpu::ErrorFilter::Internal);
    let out = f();
    let internal = pollster::block_on(internal.pop());
    let validation = pollster::block_on(validation.pop());
    (out, validation.or(internal))
}

/// The backends `WGPU_BACKEND` names (comma-separated; all when it is unset). A name wgpu does
/// not know is an error: wgpu itself would ignore it and find no adapter.
pub fn backends_from_env() -> Result<wgpu::Backends> {
    let Ok(value) = std::env::var("WGPU_BACKEND") else {
        return Ok(wgpu::Backends::all());
    };
    for name in value.split(',').map(str::trim) {
        if wgpu::Backends::from_comma_list(name).is_empty() {
            return Err(Error::Config(format!(
                "WGPU_BACKEND={value:?}: {name:?} is not a backend; use vulkan, gl, metal or dx12 \
                 (comma-separated), or unset it to try all"
            )));
        }
    }
    Ok(wgpu::Backends::from_comma_list(&value))
}

/// All adapters visible through the backends selected by `WGPU_BACKEND` (all by default, and
/// none when it names no backend: see [`backends_from_env`]).
pub fn list_adapters() -> (wgpu::Backends, Vec<wgpu::Adapter>) {
    let backends = backends_from_env().unwrap_or(wgpu::Backends::empty());
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    let instance = wgpu::Instance::new(desc);
    let adapters = pollster::block_on(instance.enumerate_adapters(backends));
    (backends, adapters)
}

impl Gpu {
    /// Opens the adapter chosen by `WGPU_BACKEND` / `WGPU_ADAPTER_NAME`, or the best one available.
    pub fn new() -> Result<Gpu> {
        Gpu::nth(0)
    }

    /// Opens the adapter `WGPU_ADAPTER_NAME` names, or else adapter `index` (modulo their count)
    /// among the best kind available: rank r of a data-parallel job takes the r-th GPU.
    pub fn nth(index: usize) -> Result<Gpu> {
        backends_from_env()?;
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
            Err(_) => {
                let best = adapters.iter().map(|a| adapter_rank(&a.get_info())).min();
                let mut alike: Vec<_> = adapters
                    .into_iter()
                    .filter(|a| Some(adapter_rank(&a.get_info())) == best)
                    .collect();
                if alike.is_empty() {
                    return Err(Error::NoAdapter {
                        tried,
                        hint: "The system reported no adapter for these backends.".into(),
                    });
                }
                let count = alike.len();
                alike.swap_remove(index % count)
            }
        };
        Gpu::from_adapter(adapter)
    }

    pub fn from_adapter(adapter: wgpu::Adapter) -> Result<Gpu> {
        let info = AdapterSummary::from(&adapter.get_info());
        let kind = AdapterKind::from(adapter.get_info().device_type);
        let limits = adapter.limits();
        // Optional features, requested where the adapter has them.
        let wanted = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SHADER_INT64;
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
        Ok(Gpu {
            device,
            queue,
            adapter: info,
            limits,
            features: required_features,
            kind,
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
            tuning: RefCell::new(Tuning::new(Mode::Off)),
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

    /// The kernel choices of this context: [`Mode::Off`] (the heuristics alone) unless the caller
    /// sets another mode, as `contrastive train --tune` does.
    pub fn tuning(&self) -> std::cell::RefMut<'_, Tuning> {
        self.tuning.borrow_mut()
    }

    /// What the tuning cache files choices under: the adapter's name, backend and driver (a new
    /// driver may favour other kernels).
    pub fn identity(&self) -> String {
        let a = &self.adapter;
        format!("{} ({}, {})", a.name, a.backend, a.driver)
    }

    /// The kind of adapter that launch decisions are taken for.
    pub fn kind(&self) -> AdapterKind {
        self.kind
    }

    /// Takes every later launch decision as for an adapter of `kind`. For tests of those
    /// decisions (a CPU adapter covering the code paths GPUs take); a program keeps the kind the
    /// adapter reported.
    pub fn set_kind(&mut self, kind: AdapterKind) {
        self.kind = kind;
    }

    /// Whether kernels may use 64-bit integer words (WGSL's `SHADER_INT64`: Vulkan on llvmpipe
    /// has them, wgpu's GL backend does not; there the kernels run their 32-bit builds).
    pub fn has_int64(&self) -> bool {
        self.features.contains(wgpu::Features::SHADER_INT64)
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
        let mut modules = self.modules.borrow_mut();
        let (pipeline, error) = first_error(&self.device, || {
            let module = modules.entry(k.file).or_insert_with(|| {
                self.device
                    .create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(k.file),
                        source: wgpu::ShaderSource::Wgsl(k.source.into()),
                    })
            });
            self.device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(k.entry),
                    layout: Some(&self.pipeline_layouts[k.buffers]),
                    module,
                    entry_point: Some(k.entry),
                    compilation_options: Default::default(),
                    cache: None,
                })
        });
        if let Some(e) = error {
            modules.remove(k.file);
            return Err(Error::Gpu(format!("kernel {}::{}: {e}", k.file, k.entry)));
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
}
