//! NVRTC: CUDA C source → PTX, with the compile log kept (CI fails on warnings).
//!
//! Uses cudarc's `result` layer rather than `compile_ptx_with_opts` because the latter
//! drops the log of a successful compile, and warnings live there.

use std::ffi::CString;

use crate::{CudaError, Module, Result};

/// A compiled module.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// PTX text.
    pub ptx: String,
    /// NVRTC's log (empty when there were no warnings).
    pub log: String,
}

/// The NVRTC library's version (major, minor).
pub fn version() -> Result<(i32, i32)> {
    if !crate::nvrtc_available() {
        return Err(CudaError::Unavailable(
            "the NVRTC library (libnvrtc.so.12) was not found; install the nvidia-cuda-nvrtc-cu12 wheel or a CUDA \
             toolkit and put its lib directory on LD_LIBRARY_PATH"
                .into(),
        ));
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present (checked above); nvrtcVersion writes two ints.
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    r.result().map_err(|e| CudaError::Unavailable(format!("nvrtcVersion failed: {e:?}")))?;
    Ok((major, minor))
}

/// The options every module is compiled with, for `arch` (`compute_87`, `compute_90`).
pub fn options(arch: &str) -> Vec<String> {
    vec![format!("--gpu-architecture={arch}"), "--std=c++17".into(), "--fmad=true".into(), "--restrict".into()]
}

/// Compiles `module` for virtual architecture `arch`.
pub fn compile(module: Module, arch: &str) -> Result<Compiled> {
    version()?;
    let src = CString::new(module.source())
        .map_err(|_| CudaError::Invalid(format!("{} contains a NUL byte", module.file_name())))?;
    let name = CString::new(module.file_name()).map_err(|_| CudaError::Invalid("module name".into()))?;
    let fail = |what: &str, e: cudarc::nvrtc::result::NvrtcError| CudaError::Compile {
        module: module.file_name(),
        arch: arch.into(),
        log: format!("{what}: {e:?}"),
    };
    let prog = cudarc::nvrtc::result::create_program(&src, Some(&name)).map_err(|e| fail("create", e))?;
    // SAFETY: `prog` was created above and is destroyed exactly once, below; `src` and
    // `name` outlive it.
    unsafe {
        let compiled = cudarc::nvrtc::result::compile_program(prog, &options(arch));
        let log = cudarc::nvrtc::result::get_program_log(prog).map(|l| c_chars_to_string(&l)).unwrap_or_default();
        let ptx = match compiled {
            Ok(()) => cudarc::nvrtc::result::get_ptx(prog).map(|p| c_chars_to_string(&p)).map_err(|e| fail("ptx", e)),
            Err(_) => Err(CudaError::Compile { module: module.file_name(), arch: arch.into(), log: log.clone() }),
        };
        let _ = cudarc::nvrtc::result::destroy_program(prog);
        ptx.map(|ptx| Compiled { ptx, log })
    }
}

fn c_chars_to_string(chars: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = chars.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).trim().to_string()
}
