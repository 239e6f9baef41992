//! The system BLAS, found at run time: `cblas_sgemm` from Accelerate (macOS), OpenBLAS, BLIS
//! or MKL, opened with `dlopen` and resolved with `dlsym`, so no build links against a BLAS
//! and every build can use one where it is installed. Only [`super::gemm`] calls into it.
//!
//! The binding is the C prototype of the CBLAS reference header, with 32-bit `int`
//! dimensions (the LP64 interface that Accelerate, Debian's OpenBLAS, BLIS and `mkl_rt` export
//! by default; a product with a dimension above `i32::MAX` never reaches it):
//! `void cblas_sgemm(order, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)`.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::Path;
use std::sync::OnceLock;

/// `CBLAS_ORDER::CblasRowMajor`.
pub const ROW_MAJOR: c_int = 101;
/// `CBLAS_TRANSPOSE::CblasNoTrans`.
pub const NO_TRANS: c_int = 111;
/// `CBLAS_TRANSPOSE::CblasTrans`.
pub const TRANS: c_int = 112;

type CblasSgemm = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const f32,
    c_int,
    *const f32,
    c_int,
    f32,
    *mut f32,
    c_int,
);

/// How a library lets its own thread count be set.
#[derive(Clone, Copy)]
enum ThreadControl {
    /// `void openblas_set_num_threads(int)`
    OpenBlas(unsafe extern "C" fn(c_int)),
    /// `void MKL_Set_Num_Threads(int)`
    Mkl(unsafe extern "C" fn(c_int)),
    /// `void bli_thread_set_num_threads(dim_t)`, dim_t = int64_t in BLIS's default build
    Blis(unsafe extern "C" fn(i64)),
}

/// An opened BLAS library. Never closed: its function pointers live as long as the process.
pub struct Blas {
    /// What was opened (the name or path given to `dlopen`).
    pub path: String,
    /// A short description: the library's own configuration string where it has one
    /// (`openblas_get_config`), else the path.
    pub about: String,
    sgemm: CblasSgemm,
    threads: Option<ThreadControl>,
}

/// The libraries tried, in order, when no path is given.
pub fn candidates() -> &'static [&'static str] {
    if cfg!(target_os = "macos") {
        &["/System/Library/Frameworks/Accelerate.framework/Accelerate"]
    } else {
        &[
            "libopenblas.so.0",
            "libopenblas.so",
            "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
            "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
            "libblis.so.4",
            "libmkl_rt.so",
        ]
    }
}

/// The last `dlerror` message.
fn dlerror() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated string owned by libc.
    unsafe {
        let e = libc::dlerror();
        if e.is_null() {
            "unknown dlopen error".to_string()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    }
}

/// `dlsym(handle, name)`, null when absent.
fn sym(handle: *mut c_void, name: &str) -> *mut c_void {
    let n = CString::new(name).expect("symbol names have no NUL");
    // SAFETY: handle came from dlopen; n is NUL-terminated.
    unsafe { libc::dlsym(handle, n.as_ptr()) }
}

impl Blas {
    /// Opens `path` (a file, or a library name the dynamic loader searches for) and resolves
    /// `cblas_sgemm`. The error says what failed.
    pub fn open(path: &str) -> Result<Blas, String> {
        let c = CString::new(path).map_err(|_| format!("{path}: path contains NUL"))?;
        // SAFETY: dlopen with a NUL-terminated name; the handle is never closed.
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(dlerror());
        }
        let f = sym(handle, "cblas_sgemm");
        if f.is_null() {
            return Err(format!("{path}: opened, but it has no cblas_sgemm"));
        }
        // SAFETY: cblas_sgemm has the CBLAS prototype of `CblasSgemm` (module docs).
        let sgemm: CblasSgemm = unsafe { std::mem::transmute::<*mut c_void, CblasSgemm>(f) };
        let threads = {
            let (o, m, b) = (
                sym(handle, "openblas_set_num_threads"),
                sym(handle, "MKL_Set_Num_Threads"),
                sym(handle, "bli_thread_set_num_threads"),
            );
            // SAFETY (each transmute): the prototypes of ThreadControl's variants.
            unsafe {
                if !o.is_null() {
                    Some(ThreadControl::OpenBlas(std::mem::transmute::<
                        *mut c_void,
                        unsafe extern "C" fn(c_int),
                    >(o)))
                } else if !m.is_null() {
                    Some(ThreadControl::Mkl(std::mem::transmute::<
                        *mut c_void,
                        unsafe extern "C" fn(c_int),
                    >(m)))
                } else if !b.is_null() {
                    Some(ThreadControl::Blis(std::mem::transmute::<
                        *mut c_void,
                        unsafe extern "C" fn(i64),
                    >(b)))
                } else {
                    None
                }
            }
        };
        let config = sym(handle, "openblas_get_config");
        let about = if config.is_null() {
            path.to_string()
        } else {
            // SAFETY: `char *openblas_get_config(void)` returns a static NUL-terminated string.
            unsafe {
                let f: unsafe extern "C" fn() -> *const c_char = std::mem::transmute(config);
                let s = f();
                if s.is_null() {
                    path.to_string()
                } else {
                    CStr::from_ptr(s).to_string_lossy().trim().to_string()
                }
            }
        };
        Ok(Blas {
            path: path.to_string(),
            about,
            sgemm,
            threads,
        })
    }

    /// Opens `path` if given, else the first of [`candidates`] that loads. The error names
    /// everything tried and why each failed.
    pub fn find(path: Option<&Path>) -> Result<Blas, String> {
        if let Some(p) = path {
            return Blas::open(&p.to_string_lossy());
        }
        let mut why = Vec::new();
        for c in candidates() {
            match Blas::open(c) {
                Ok(b) => return Ok(b),
                Err(e) => why.push(e),
            }
        }
        Err(format!("tried {}", why.join("; ")))
    }

    /// The library of the default search, opened once per process (`Err`: why none loads).
    pub fn system() -> Result<&'static Blas, &'static str> {
        static SYSTEM: OnceLock<Result<Blas, String>> = OnceLock::new();
        SYSTEM
            .get_or_init(|| Blas::find(None))
            .as_ref()
            .map_err(|e| e.as_str())
    }

    /// Whether the library's own thread count can be set ([`Blas::set_threads`]).
    pub fn has_thread_control(&self) -> bool {
        self.threads.is_some()
    }

    /// Sets the library's own thread count for later calls (no-op where it has no control).
    pub fn set_threads(&self, n: usize) {
        let n = n.clamp(1, c_int::MAX as usize);
        // SAFETY: the resolved functions take a thread count.
        unsafe {
            match self.threads {
                Some(ThreadControl::OpenBlas(f)) | Some(ThreadControl::Mkl(f)) => f(n as c_int),
                Some(ThreadControl::Blis(f)) => f(n as i64),
                None => {}
            }
        }
    }

    /// Row-major `cblas_sgemm`: `C[m,n] = alpha·op(A)·op(B) + beta·C`, `trans_a`/`trans_b`
    /// one of [`NO_TRANS`], [`TRANS`].
    ///
    /// # Safety
    /// The pointers and leading dimensions must describe in-bounds row-major matrices as
    /// CBLAS defines them (A is `[m,k]` or, transposed, `[k,m]` with row stride `lda` ≥ its
    /// columns, likewise B; C `[m,n]` with `ldc` ≥ n), and C must not alias A or B nor be
    /// touched by anyone else during the call.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn sgemm(
        &self,
        trans_a: c_int,
        trans_b: c_int,
        m: c_int,
        n: c_int,
        k: c_int,
        alpha: f32,
        a: *const f32,
        lda: c_int,
        b: *const f32,
        ldb: c_int,
        beta: f32,
        c: *mut f32,
        ldc: c_int,
    ) {
        (self.sgemm)(
            ROW_MAJOR, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
        )
    }
}

/// For tests that exercise the BLAS path: the system library, or `None` after printing a
/// plain SKIP line when none loads. Under CI (`CI=true`, where `.ci/run` installs OpenBLAS)
/// a missing library fails the test instead of skipping it.
#[doc(hidden)]
pub fn system_or_skip(what: &str) -> Option<&'static Blas> {
    match Blas::system() {
        Ok(b) => Some(b),
        Err(why) => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !ci,
                "{what}: CI=true but no BLAS library loads ({why}); .ci/run installs OpenBLAS"
            );
            eprintln!("SKIP {what}: no BLAS library loads ({why})");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_and_missing_symbol_explain_themselves() {
        let e = Blas::open("/nonexistent/libnothing.so").err().unwrap();
        assert!(e.contains("libnothing"), "{e}");
        // libc is loaded in every process and has no cblas_sgemm.
        let libc_name = if cfg!(target_os = "macos") {
            "/usr/lib/libSystem.B.dylib"
        } else {
            "libc.so.6"
        };
        let e = Blas::open(libc_name).err().unwrap();
        assert!(e.contains("no cblas_sgemm"), "{e}");
    }
}
