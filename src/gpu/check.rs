//! The finite-check mode: a step replayed with every recorded dispatch and copy surrounded by
//! scans of its f32 regions for NaN and infinity, to name the first command that wrote one. The
//! scan kernel belongs to the layer above (`kernels::guard`): it is handed in as a
//! [`FiniteScan`] when the mode starts, so this layer launches it without knowing it.

use super::{Gpu, Region};
use crate::error::Result;

/// A kernel launcher that raises word `slot` of `flags` (sets it to 1) when region `x` holds a NaN
/// or an infinity, or always when the last argument (`force`) is true; check mode passes false.
/// `kernels::guard::check_finite` is one.
pub type FiniteScan =
    fn(gpu: &Gpu, x: Region, flags: Region, slot: usize, force: bool) -> Result<()>;

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
pub(super) struct Checks {
    /// The scan kernel's launcher.
    scan: FiniteScan,
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

impl Gpu {
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

    pub(super) fn checking(&self) -> bool {
        !self.instrumenting.get() && self.checks.borrow().is_some()
    }

    fn next_command(&self) -> usize {
        let mut checks = self.checks.borrow_mut();
        let c = checks.as_mut().expect("check mode");
        c.commands += 1;
        c.commands
    }

    /// Starts check mode: until [`Gpu::end_finite_checks`], every recorded dispatch and copy is
    /// surrounded by scans of its f32 regions for NaN and infinity, one flag word each, run by
    /// `scan`. Slow (a diagnostic, not for training): it finds the first command that wrote a
    /// non-finite value.
    pub fn begin_finite_checks(&self, scan: FiniteScan) -> Result<()> {
        self.flush()?;
        *self.checks.borrow_mut() = Some(Checks {
            scan,
            flags: vec![],
            checks: vec![],
            commands: 0,
        });
        Ok(())
    }

    /// Records one command through `record`, unchecked, followed by scans of the `scanned`
    /// regions (binding, region) of `what` and, when `before`, preceded by them too.
    pub(super) fn checked(
        &self,
        what: &str,
        scanned: &[(Option<usize>, Region)],
        before: bool,
        record: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let command = self.next_command();
        if before {
            for &(binding, r) in scanned {
                self.check(r, command, what, binding, true)?;
            }
        }
        self.instrumenting.set(true);
        let recorded = record();
        self.instrumenting.set(false);
        recorded?;
        for &(binding, r) in scanned {
            self.check(r, command, what, binding, false)?;
        }
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
            let scan = c.scan;
            c.checks.push(Check {
                command,
                scope: self.scopes.borrow().last().cloned(),
                kernel: what.to_string(),
                binding,
                name,
                before,
            });
            drop(checks);
            scan(self, piece, flags, slot, false)
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
}
