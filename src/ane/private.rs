//! The real Neural Engine through Apple's private `AppleNeuralEngine` framework, resolved at
//! run time with `dlopen`/`dlsym` and driven with `objc_msgSend`, so this file compiles (and
//! reports "unavailable") on every platform.
//!
//! Call order (docs/ANE.md, "The private runtime"), per program:
//! 1. `[_ANEInMemoryModelDescriptor modelWithMILText:(NSData) weights:(NSDictionary) optionsPlist:nil]`
//!    — weight dictionary `{ "@model_path/weights/x.bin": { "offset": 0, "data": NSData } }`,
//!    an empty dictionary (never nil) for weight-free programs;
//! 2. `[_ANEInMemoryModel inMemoryModelWithDescriptor:]`, then `hexStringIdentifier` names a
//!    directory under `NSTemporaryDirectory()` that is filled with `model.mil` and the blob
//!    files before compiling, as every working path of the reference does;
//! 3. `compileWithQoS:21 options:@{} error:` and `loadWithQoS:21 options:@{} error:` (load is
//!    retried once after 100 ms); the process-wide compile counter counts successes;
//! 4. per (program, input, output) a reusable `_ANERequest` binding `_ANEIOSurfaceObject`
//!    wrappers of the two IOSurfaces, `procedureIndex:@0`;
//! 5. `evaluateWithQoS:21 options:@{} request:error:` — synchronous; its BOOL is checked;
//! 6. `unloadWithQoS:21 error:`, surfaces released, temp directories removed when the last
//!    program using them is freed (identical programs share a directory).
//!
//! Every failure carries the framework's `NSError` text: its `description` (domain, code and
//! user info, where the compiler puts its detail) followed by that of each error in its
//! `NSUnderlyingError` chain — not only the `localizedDescription`.
//!
//! On arm64 `objc_msgSend` must be called through the exact non-variadic signature of each
//! method; every call below transmutes it to one. `BOOL` returns are read as one byte.
//!
//! This path has not been run on Apple hardware from this repository's test suite; on other
//! systems [`availability`] explains why it cannot be used.

use crate::ane::device::{Device, ProgramId, SurfaceId, DEFAULT_COMPILE_BUDGET};
use crate::ane::mil::Program;
use anyhow::{anyhow, bail, Context, Result};
use half::f16;
use libc::{c_char, c_void};
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

type Id = *mut c_void;
type Sel = *mut c_void;

pub const FRAMEWORK: &str =
    "/System/Library/PrivateFrameworks/AppleNeuralEngine.framework/AppleNeuralEngine";
const LIBOBJC: &str = "/usr/lib/libobjc.A.dylib";
const FOUNDATION: &str = "/System/Library/Frameworks/Foundation.framework/Foundation";
const IOSURFACE: &str = "/System/Library/Frameworks/IOSurface.framework/IOSurface";
const COREFOUNDATION: &str = "/System/Library/Frameworks/CoreFoundation.framework/CoreFoundation";

/// QoS passed to every call (`QOS_CLASS_DEFAULT`); the hardware runs at a fixed clock and
/// shows no latency difference between values.
const QOS: u32 = 21;
/// `kIOSurfaceLockReadOnly`.
const LOCK_READ_ONLY: u32 = 1;

/// Successful compiles in this process: the compiler's leak is per process, whatever the
/// number of device objects.
static COMPILES: AtomicU64 = AtomicU64::new(0);

/// The resolved runtime: C entry points and the four classes.
struct Api {
    objc_get_class: unsafe extern "C" fn(*const c_char) -> Id,
    sel_register_name: unsafe extern "C" fn(*const c_char) -> Sel,
    msg_send: *const c_void,
    pool_push: unsafe extern "C" fn() -> *mut c_void,
    pool_pop: unsafe extern "C" fn(*mut c_void),
    ns_temporary_directory: unsafe extern "C" fn() -> Id,
    io_surface_create: unsafe extern "C" fn(Id) -> *mut c_void,
    io_surface_lock: unsafe extern "C" fn(*mut c_void, u32, *mut u32) -> i32,
    io_surface_unlock: unsafe extern "C" fn(*mut c_void, u32, *mut u32) -> i32,
    io_surface_get_base_address: unsafe extern "C" fn(*mut c_void) -> *mut c_void,
    io_surface_get_alloc_size: unsafe extern "C" fn(*mut c_void) -> usize,
    cf_release: unsafe extern "C" fn(*const c_void),
    descriptor_class: Id,
    model_class: Id,
    request_class: Id,
    surface_object_class: Id,
}

// SAFETY: the function pointers and class objects are immutable process-wide values.
unsafe impl Send for Api {}
unsafe impl Sync for Api {}

fn dl_error() -> String {
    // SAFETY: dlerror returns a thread-local C string or null.
    unsafe {
        let e = libc::dlerror();
        if e.is_null() {
            "unknown error".into()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    }
}

fn open(path: &str) -> Result<*mut c_void, String> {
    let c = CString::new(path).unwrap();
    // SAFETY: dlopen with a valid C string.
    let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if h.is_null() {
        Err(format!("cannot load {path}: {}", dl_error()))
    } else {
        Ok(h)
    }
}

fn sym(h: *mut c_void, name: &str) -> Result<*mut c_void, String> {
    let c = CString::new(name).unwrap();
    // SAFETY: dlsym on a live handle with a valid C string.
    let p = unsafe { libc::dlsym(h, c.as_ptr()) };
    if p.is_null() {
        Err(format!("symbol {name} not found: {}", dl_error()))
    } else {
        Ok(p)
    }
}

/// A symbol's address as the function pointer type `T`.
///
/// # Safety
/// `T` must be a function pointer type matching the symbol's C signature.
unsafe fn fn_ptr<T: Copy>(p: *mut c_void) -> T {
    assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<*mut c_void>());
    std::mem::transmute_copy(&p)
}

impl Api {
    fn load() -> Result<Api, String> {
        let ane = open(FRAMEWORK).map_err(|e| {
            format!(
                "{e}. The Neural Engine runtime is Apple's private AppleNeuralEngine framework, \
                 which exists only on macOS on Apple Silicon (this is {} on {}); \
                 --backend ane-sim runs the same programs on the simulated device",
                std::env::consts::OS,
                std::env::consts::ARCH
            )
        })?;
        let objc = open(LIBOBJC)?;
        let foundation = open(FOUNDATION)?;
        let iosurface = open(IOSURFACE)?;
        let cf = open(COREFOUNDATION)?;
        let _ = ane;
        // SAFETY: each symbol is transmuted to its documented C signature.
        unsafe {
            macro_rules! f {
                ($h:expr, $n:expr) => {
                    fn_ptr(sym($h, $n)?)
                };
            }
            let mut api = Api {
                objc_get_class: f!(objc, "objc_getClass"),
                sel_register_name: f!(objc, "sel_registerName"),
                msg_send: sym(objc, "objc_msgSend")? as *const c_void,
                pool_push: f!(objc, "objc_autoreleasePoolPush"),
                pool_pop: f!(objc, "objc_autoreleasePoolPop"),
                ns_temporary_directory: f!(foundation, "NSTemporaryDirectory"),
                io_surface_create: f!(iosurface, "IOSurfaceCreate"),
                io_surface_lock: f!(iosurface, "IOSurfaceLock"),
                io_surface_unlock: f!(iosurface, "IOSurfaceUnlock"),
                io_surface_get_base_address: f!(iosurface, "IOSurfaceGetBaseAddress"),
                io_surface_get_alloc_size: f!(iosurface, "IOSurfaceGetAllocSize"),
                cf_release: f!(cf, "CFRelease"),
                descriptor_class: std::ptr::null_mut(),
                model_class: std::ptr::null_mut(),
                request_class: std::ptr::null_mut(),
                surface_object_class: std::ptr::null_mut(),
            };
            for (slot, name) in [
                (&mut api.descriptor_class, "_ANEInMemoryModelDescriptor"),
                (&mut api.model_class, "_ANEInMemoryModel"),
                (&mut api.request_class, "_ANERequest"),
                (&mut api.surface_object_class, "_ANEIOSurfaceObject"),
            ] {
                let c = CString::new(name).unwrap();
                let cls = (api.objc_get_class)(c.as_ptr());
                if cls.is_null() {
                    return Err(format!(
                        "class {name} is missing from {FRAMEWORK}: this macOS version's \
                         private Neural Engine API differs from the one this program drives"
                    ));
                }
                *slot = cls;
            }
            Ok(api)
        }
    }

    fn sel(&self, name: &str) -> Sel {
        let c = CString::new(name).unwrap();
        // SAFETY: sel_registerName with a valid C string.
        unsafe { (self.sel_register_name)(c.as_ptr()) }
    }

    /// `[recv sel]` returning an object.
    unsafe fn send0(&self, recv: Id, sel: &str) -> Id {
        let f: unsafe extern "C" fn(Id, Sel) -> Id = std::mem::transmute(self.msg_send);
        f(recv, self.sel(sel))
    }
    unsafe fn send1(&self, recv: Id, sel: &str, a: Id) -> Id {
        let f: unsafe extern "C" fn(Id, Sel, Id) -> Id = std::mem::transmute(self.msg_send);
        f(recv, self.sel(sel), a)
    }
    unsafe fn send2_void(&self, recv: Id, sel: &str, a: Id, b: Id) {
        let f: unsafe extern "C" fn(Id, Sel, Id, Id) = std::mem::transmute(self.msg_send);
        f(recv, self.sel(sel), a, b)
    }
    unsafe fn release(&self, obj: Id) {
        if !obj.is_null() {
            let f: unsafe extern "C" fn(Id, Sel) = std::mem::transmute(self.msg_send);
            f(obj, self.sel("release"))
        }
    }
    unsafe fn retain(&self, obj: Id) -> Id {
        self.send0(obj, "retain")
    }
    unsafe fn class(&self, name: &str) -> Id {
        let c = CString::new(name).unwrap();
        (self.objc_get_class)(c.as_ptr())
    }

    unsafe fn nsstring(&self, s: &str) -> Id {
        let c = CString::new(s).unwrap_or_default();
        let f: unsafe extern "C" fn(Id, Sel, *const c_char) -> Id =
            std::mem::transmute(self.msg_send);
        f(
            self.class("NSString"),
            self.sel("stringWithUTF8String:"),
            c.as_ptr(),
        )
    }
    unsafe fn to_string(&self, s: Id) -> String {
        if s.is_null() {
            return String::new();
        }
        let f: unsafe extern "C" fn(Id, Sel) -> *const c_char = std::mem::transmute(self.msg_send);
        let p = f(s, self.sel("UTF8String"));
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
    unsafe fn nsdata(&self, bytes: &[u8]) -> Id {
        let f: unsafe extern "C" fn(Id, Sel, *const c_void, usize) -> Id =
            std::mem::transmute(self.msg_send);
        f(
            self.class("NSData"),
            self.sel("dataWithBytes:length:"),
            bytes.as_ptr() as *const c_void,
            bytes.len(),
        )
    }
    unsafe fn nsnumber_u64(&self, v: u64) -> Id {
        let f: unsafe extern "C" fn(Id, Sel, u64) -> Id = std::mem::transmute(self.msg_send);
        f(
            self.class("NSNumber"),
            self.sel("numberWithUnsignedLongLong:"),
            v,
        )
    }
    unsafe fn dictionary(&self, pairs: &[(&str, Id)]) -> Id {
        let d = self.send0(self.class("NSMutableDictionary"), "dictionary");
        for (k, v) in pairs {
            self.send2_void(d, "setObject:forKey:", *v, self.nsstring(k));
        }
        d
    }
    unsafe fn array(&self, items: &[Id]) -> Id {
        let f: unsafe extern "C" fn(Id, Sel, *const Id, usize) -> Id =
            std::mem::transmute(self.msg_send);
        f(
            self.class("NSArray"),
            self.sel("arrayWithObjects:count:"),
            items.as_ptr(),
            items.len(),
        )
    }
    /// `[model <sel>QoS:options:error:]`-style call returning BOOL.
    unsafe fn qos_call(&self, recv: Id, sel: &str, err: &mut Id) -> bool {
        let f: unsafe extern "C" fn(Id, Sel, u32, Id, *mut Id) -> i8 =
            std::mem::transmute(self.msg_send);
        f(recv, self.sel(sel), QOS, self.dictionary(&[]), err) != 0
    }
    /// `[obj isKindOfClass:cls]`.
    unsafe fn is_kind_of(&self, obj: Id, cls: Id) -> bool {
        if obj.is_null() || cls.is_null() {
            return false;
        }
        let f: unsafe extern "C" fn(Id, Sel, Id) -> i8 = std::mem::transmute(self.msg_send);
        f(obj, self.sel("isKindOfClass:"), cls) != 0
    }
    /// The text of an `NSError`: its `description`, then the `description` of each error down
    /// its `userInfo[NSUnderlyingError]` chain (at most 8 deep, so a cycle cannot hang us).
    unsafe fn error_text(&self, err: Id) -> String {
        if err.is_null() {
            return "the framework returned no error object".into();
        }
        let ns_error = self.class("NSError");
        let key = self.nsstring("NSUnderlyingError");
        let mut parts: Vec<String> = Vec::new();
        let mut e = err;
        for _ in 0..8 {
            let mut d = self.to_string(self.send0(e, "description"));
            if d.is_empty() {
                d = self.to_string(self.send0(e, "localizedDescription"));
            }
            parts.push(d);
            let info = self.send0(e, "userInfo");
            if info.is_null() {
                break;
            }
            let next = self.send1(info, "objectForKey:", key);
            if !self.is_kind_of(next, ns_error) {
                break;
            }
            e = next;
        }
        parts.join("; underlying error: ")
    }
}

fn api() -> Result<&'static Api, String> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    API.get_or_init(Api::load).as_ref().map_err(|e| e.clone())
}

/// Whether the private runtime can be loaded here, and if not, why.
pub fn availability() -> Result<(), String> {
    api().map(|_| ())
}

/// Runs `f` inside an autorelease pool.
fn pooled<T>(a: &Api, f: impl FnOnce() -> T) -> T {
    // SAFETY: push/pop are balanced around `f`.
    unsafe {
        let p = (a.pool_push)();
        let r = f();
        (a.pool_pop)(p);
        r
    }
}

struct Model {
    label: String,
    model: Id,
    tmpdir: PathBuf,
    input_bytes: usize,
    output_bytes: usize,
    /// Requests keyed by (input surface, output surface).
    requests: HashMap<(usize, usize), Id>,
}

struct Surface {
    surf: *mut c_void,
    wrap: Id,
    bytes: usize,
}

/// The Neural Engine through the private runtime.
pub struct PrivateDevice {
    api: &'static Api,
    programs: Vec<Option<Model>>,
    surfaces: Vec<Option<Surface>>,
    tmp_refs: TmpRefs,
    budget: u64,
}

/// Reference counts of the compiler's temporary directories (identical programs share one,
/// ANE_FACTS defect 17), shared with the background compiler.
type TmpRefs = std::sync::Arc<std::sync::Mutex<HashMap<PathBuf, usize>>>;

fn release_tmp(refs: &TmpRefs, dir: &PathBuf) {
    let mut r = refs.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = r.get_mut(dir) {
        *n -= 1;
        if *n == 0 {
            r.remove(dir);
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Compiles and loads programs on another thread than the device's evaluations (the
/// static pipeline's background compiles; [`crate::ane::compile_queue`]).
struct PrivateCompiler {
    api: &'static Api,
    tmp_refs: TmpRefs,
}

// SAFETY: the compiler only creates new Objective-C objects and hands the retained model to
// the device; it shares nothing with the device's thread but the mutex-guarded refcounts.
unsafe impl Send for PrivateCompiler {}

/// A model compiled by [`PrivateCompiler`], on its way to the device.
struct SendModel(Model);
// SAFETY: the model is retained and not used by the compiling thread after it is sent.
unsafe impl Send for SendModel {}

impl crate::ane::device::Compiler for PrivateCompiler {
    fn compile(&mut self, p: &Program) -> Result<crate::ane::device::Compiled> {
        let a = self.api;
        let m = pooled(a, || compile_model(a, &self.tmp_refs, p))?;
        Ok(crate::ane::device::Compiled::new(SendModel(m), None))
    }
}

// SAFETY: the device is used from one thread at a time (`&mut self` everywhere); the
// Objective-C objects it retains are not tied to the creating thread.
unsafe impl Send for PrivateDevice {}

impl PrivateDevice {
    /// Loads the runtime; fails with the reason on systems without it.
    pub fn new() -> Result<PrivateDevice> {
        let api = api().map_err(|e| anyhow!("Neural Engine unavailable: {e}"))?;
        Ok(PrivateDevice {
            api,
            programs: Vec::new(),
            surfaces: Vec::new(),
            tmp_refs: TmpRefs::default(),
            budget: DEFAULT_COMPILE_BUDGET,
        })
    }

    /// Sets the budget the backend plans against (the hardware limit is about 119).
    pub fn with_budget(mut self, budget: u64) -> PrivateDevice {
        self.budget = budget;
        self
    }

    fn surface(&self, s: SurfaceId) -> Result<&Surface> {
        self.surfaces
            .get(s.0)
            .and_then(|x| x.as_ref())
            .ok_or_else(|| anyhow!("surface {} does not exist", s.0))
    }

    fn model(&self, p: ProgramId) -> Result<&Model> {
        self.programs
            .get(p.0)
            .and_then(|x| x.as_ref())
            .ok_or_else(|| anyhow!("program {} is not loaded", p.0))
    }

    /// The lock/unlock pair around a surface access; `read_only` selects the lock mode.
    fn with_locked(
        &self,
        s: SurfaceId,
        read_only: bool,
        f: &mut dyn FnMut(*mut f16, usize),
    ) -> Result<()> {
        let a = self.api;
        let sf = self.surface(s)?;
        let opt = if read_only { LOCK_READ_ONLY } else { 0 };
        // SAFETY: the surface is live; the base address is valid for its allocation size
        // while locked, and IOSurface allocations are page-aligned (so f16-aligned).
        unsafe {
            let rc = (a.io_surface_lock)(sf.surf, opt, std::ptr::null_mut());
            if rc != 0 {
                bail!("IOSurfaceLock failed with status {rc}");
            }
            let base = (a.io_surface_get_base_address)(sf.surf) as *mut f16;
            f(base, sf.bytes / 2);
            (a.io_surface_unlock)(sf.surf, opt, std::ptr::null_mut());
        }
        Ok(())
    }
}

/// Compiles and loads one program (steps 1–3 of the module doc).
fn compile_model(a: &Api, tmp_refs: &TmpRefs, p: &Program) -> Result<Model> {
    // SAFETY: every message below is sent with the signature the method declares
    // (docs/ANE.md, "The private runtime"); objects kept beyond the pool are retained.
    unsafe {
        let mut weights: Vec<(&str, Id)> = Vec::new();
        for (path, blob) in &p.weights {
            let entry = a.dictionary(&[("offset", a.nsnumber_u64(0)), ("data", a.nsdata(blob))]);
            weights.push((path.as_str(), entry));
        }
        let wdict = a.dictionary(&weights);
        let text = a.nsdata(p.text.as_bytes());
        let f: unsafe extern "C" fn(Id, Sel, Id, Id, Id) -> Id = std::mem::transmute(a.msg_send);
        let desc = f(
            a.descriptor_class,
            a.sel("modelWithMILText:weights:optionsPlist:"),
            text,
            wdict,
            std::ptr::null_mut(),
        );
        if desc.is_null() {
            bail!(
                "{}: _ANEInMemoryModelDescriptor rejected the MIL text or weights (it reports no reason)",
                p.label
            );
        }
        let model = a.send1(a.model_class, "inMemoryModelWithDescriptor:", desc);
        if model.is_null() {
            bail!("{}: _ANEInMemoryModel could not be created", p.label);
        }
        let hex = a.to_string(a.send0(model, "hexStringIdentifier"));
        let tmp = PathBuf::from(a.to_string((a.ns_temporary_directory)())).join(&hex);
        std::fs::create_dir_all(tmp.join("weights"))
            .with_context(|| format!("{}: cannot create {}", p.label, tmp.display()))?;
        std::fs::write(tmp.join("model.mil"), &p.text)
            .with_context(|| format!("{}: cannot write model.mil", p.label))?;
        for (path, blob) in &p.weights {
            let rel = path.strip_prefix("@model_path/").unwrap_or(path);
            std::fs::write(tmp.join(rel), blob)
                .with_context(|| format!("{}: cannot write {rel}", p.label))?;
        }
        *tmp_refs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(tmp.clone())
            .or_insert(0) += 1;
        let mut err: Id = std::ptr::null_mut();
        if !a.qos_call(model, "compileWithQoS:options:error:", &mut err) {
            let msg = a.error_text(err);
            release_tmp(tmp_refs, &tmp);
            bail!("{}: Neural Engine compile failed: {msg}", p.label);
        }
        let mut err: Id = std::ptr::null_mut();
        if !a.qos_call(model, "loadWithQoS:options:error:", &mut err) {
            // The reference bridge retries once: slots may need time to be reclaimed.
            std::thread::sleep(std::time::Duration::from_millis(100));
            let mut err2: Id = std::ptr::null_mut();
            if !a.qos_call(model, "loadWithQoS:options:error:", &mut err2) {
                let msg = a.error_text(err2);
                release_tmp(tmp_refs, &tmp);
                bail!("{}: Neural Engine load failed: {msg}", p.label);
            }
        }
        Ok(Model {
            label: p.label.clone(),
            model: a.retain(model),
            tmpdir: tmp,
            input_bytes: 2 * p.input.iter().product::<usize>(),
            output_bytes: 2 * p.output.iter().product::<usize>(),
            requests: HashMap::new(),
        })
    }
}

impl Device for PrivateDevice {
    fn name(&self) -> &str {
        "ane"
    }

    fn compile(&mut self, p: &Program) -> Result<ProgramId> {
        let a = self.api;
        let m = pooled(a, || compile_model(a, &self.tmp_refs, p))?;
        COMPILES.fetch_add(1, Ordering::SeqCst);
        self.programs.push(Some(m));
        Ok(ProgramId(self.programs.len() - 1))
    }

    fn background_compiler(&self) -> Option<Box<dyn crate::ane::device::Compiler>> {
        Some(Box::new(PrivateCompiler {
            api: self.api,
            tmp_refs: self.tmp_refs.clone(),
        }))
    }

    fn install(&mut self, c: crate::ane::device::Compiled) -> Result<ProgramId> {
        let SendModel(m) = c.take::<SendModel>()?;
        COMPILES.fetch_add(1, Ordering::SeqCst);
        self.programs.push(Some(m));
        Ok(ProgramId(self.programs.len() - 1))
    }

    fn free(&mut self, p: ProgramId) -> Result<()> {
        let a = self.api;
        let m = self
            .programs
            .get_mut(p.0)
            .and_then(|x| x.take())
            .ok_or_else(|| anyhow!("program {} is not loaded", p.0))?;
        let msg = pooled(a, || unsafe {
            // SAFETY: unloadWithQoS:error: → (Id, Sel, u32, NSError**) -> BOOL.
            let f: unsafe extern "C" fn(Id, Sel, u32, *mut Id) -> i8 =
                std::mem::transmute(a.msg_send);
            let mut err: Id = std::ptr::null_mut();
            let ok = f(m.model, a.sel("unloadWithQoS:error:"), QOS, &mut err) != 0;
            let msg = (!ok).then(|| a.error_text(err));
            for (_, r) in m.requests.iter() {
                a.release(*r);
            }
            a.release(m.model);
            msg
        });
        release_tmp(&self.tmp_refs, &m.tmpdir);
        if let Some(msg) = msg {
            bail!("{}: unload failed: {msg}", m.label);
        }
        Ok(())
    }

    fn create_surface(&mut self, elems: usize) -> Result<SurfaceId> {
        let a = self.api;
        let bytes = elems * 2;
        let s = pooled(a, || unsafe {
            // SAFETY: IOSurfaceCreate takes a CFDictionary (toll-free bridged NSDictionary)
            // of CFNumbers under the IOSurface property keys.
            let n = |v: u64| a.nsnumber_u64(v);
            let props = a.dictionary(&[
                ("IOSurfaceWidth", n(bytes as u64)),
                ("IOSurfaceHeight", n(1)),
                ("IOSurfaceBytesPerElement", n(1)),
                ("IOSurfaceBytesPerRow", n(bytes as u64)),
                ("IOSurfaceAllocSize", n(bytes as u64)),
                ("IOSurfacePixelFormat", n(0)),
            ]);
            let surf = (a.io_surface_create)(props);
            if surf.is_null() {
                return Err(anyhow!("IOSurfaceCreate failed for {bytes} bytes"));
            }
            if (a.io_surface_get_alloc_size)(surf) < bytes {
                (a.cf_release)(surf);
                return Err(anyhow!(
                    "IOSurface smaller than the {bytes} bytes asked for"
                ));
            }
            let wrap = a.send1(a.surface_object_class, "objectWithIOSurface:", surf);
            if wrap.is_null() {
                (a.cf_release)(surf);
                return Err(anyhow!("_ANEIOSurfaceObject could not wrap the surface"));
            }
            Ok(Surface {
                surf,
                wrap: a.retain(wrap),
                bytes,
            })
        })?;
        self.surfaces.push(Some(s));
        let id = SurfaceId(self.surfaces.len() - 1);
        self.write_surface(id, &mut |v| v.fill(f16::ZERO))?;
        Ok(id)
    }

    fn write_surface(&mut self, s: SurfaceId, f: &mut dyn FnMut(&mut [f16])) -> Result<()> {
        self.with_locked(s, false, &mut |p, n| {
            // SAFETY: `p` points at `n` writable f16 values while the surface is locked.
            f(unsafe { std::slice::from_raw_parts_mut(p, n) })
        })
    }

    fn read_surface(&mut self, s: SurfaceId, f: &mut dyn FnMut(&[f16])) -> Result<()> {
        self.with_locked(s, true, &mut |p, n| {
            // SAFETY: `p` points at `n` readable f16 values while the surface is locked.
            f(unsafe { std::slice::from_raw_parts(p, n) })
        })
    }

    fn evaluate(
        &mut self,
        p: ProgramId,
        inputs: &[SurfaceId],
        outputs: &[SurfaceId],
    ) -> Result<()> {
        let a = self.api;
        let m = self.model(p)?;
        if inputs.len() != 1 || outputs.len() != 1 {
            bail!(
                "{}: a Neural Engine request takes exactly one input and one output surface (error 0x1d), got {} and {}",
                m.label,
                inputs.len(),
                outputs.len()
            );
        }
        let (si, so) = (self.surface(inputs[0])?, self.surface(outputs[0])?);
        if si.bytes != m.input_bytes || so.bytes != m.output_bytes {
            bail!(
                "{}: surfaces of {} and {} bytes, the program needs {} and {}",
                m.label,
                si.bytes,
                so.bytes,
                m.input_bytes,
                m.output_bytes
            );
        }
        let key = (inputs[0].0, outputs[0].0);
        let (wi, wo, model, label) = (si.wrap, so.wrap, m.model, m.label.clone());
        let req = match m.requests.get(&key) {
            Some(r) => *r,
            None => {
                let r = pooled(a, || unsafe {
                    // SAFETY: the seven-object factory of _ANERequest (docs/ANE.md, "The private runtime").
                    let f: unsafe extern "C" fn(Id, Sel, Id, Id, Id, Id, Id, Id, Id) -> Id =
                        std::mem::transmute(a.msg_send);
                    let idx = a.array(&[a.nsnumber_u64(0)]);
                    let r = f(
                        a.request_class,
                        a.sel("requestWithInputs:inputIndices:outputs:outputIndices:weightsBuffer:perfStats:procedureIndex:"),
                        a.array(&[wi]),
                        idx,
                        a.array(&[wo]),
                        idx,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        a.nsnumber_u64(0),
                    );
                    if r.is_null() {
                        std::ptr::null_mut()
                    } else {
                        a.retain(r)
                    }
                });
                if r.is_null() {
                    bail!("{label}: _ANERequest could not be created");
                }
                self.programs[p.0].as_mut().unwrap().requests.insert(key, r);
                r
            }
        };
        let msg = pooled(a, || unsafe {
            // SAFETY: evaluateWithQoS:options:request:error: → (Id, Sel, u32, Id, Id, NSError**) -> BOOL.
            let f: unsafe extern "C" fn(Id, Sel, u32, Id, Id, *mut Id) -> i8 =
                std::mem::transmute(a.msg_send);
            let mut err: Id = std::ptr::null_mut();
            let ok = f(
                model,
                a.sel("evaluateWithQoS:options:request:error:"),
                QOS,
                a.dictionary(&[]),
                req,
                &mut err,
            ) != 0;
            (!ok).then(|| a.error_text(err))
        });
        if let Some(msg) = msg {
            bail!("{label}: Neural Engine evaluation failed: {msg}");
        }
        Ok(())
    }

    fn compiles(&self) -> u64 {
        COMPILES.load(Ordering::SeqCst)
    }

    fn compile_budget(&self) -> u64 {
        self.budget
    }
}

impl Drop for PrivateDevice {
    fn drop(&mut self) {
        for i in 0..self.programs.len() {
            if self.programs[i].is_some() {
                let _ = self.free(ProgramId(i));
            }
        }
        let a = self.api;
        for s in self.surfaces.drain(..).flatten() {
            // SAFETY: the wrapper was retained by us; the surface was created by us.
            unsafe {
                a.release(s.wrap);
                (a.cf_release)(s.surf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(not(target_os = "macos"))]
    fn unavailable_off_macos_with_a_reason() {
        let e = super::availability().unwrap_err();
        assert!(
            e.contains("only on macOS") && e.contains("AppleNeuralEngine"),
            "{e}"
        );
        let e = super::PrivateDevice::new().err().unwrap().to_string();
        assert!(e.starts_with("Neural Engine unavailable"), "{e}");
    }
}
