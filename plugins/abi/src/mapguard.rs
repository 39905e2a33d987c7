//! A SIGBUS guard for read-only file mappings: a file truncated under a live mapping
//! becomes a flag the owner checks, not a dead process.
//!
//! Reading a mapped page that lies past the file's (new) end raises SIGBUS. graft maps
//! models and large adapters, and another process can truncate them (`cp new old`
//! truncates first). The guard: one process-wide SIGBUS handler (installed on first
//! [`register`], `SA_SIGINFO | SA_ONSTACK`) looks the faulting address up in a fixed table
//! of registered ranges. Inside one, it maps a zero-filled anonymous page over the faulting
//! page (`mmap(MAP_FIXED | MAP_ANONYMOUS)`), sets that range's flag and returns: the
//! faulting load is retried and reads zeros. The owner checks [`Guard::faulted`] after
//! the work that touched the mapping and discards what it computed (graft turns it into
//! `FileChanged` for that run, and the mapping stays refused until reopened). Outside every
//! range the signal goes to the handler that was installed before (Rust's own stack-overflow
//! handler, a debugger's, or the default action, which kills the process as before).
//!
//! Why not `sigsetjmp`/`siglongjmp`: jumping out of Rust frames skips destructors and is
//! undefined behaviour; retrying the load against a zero page keeps every frame intact.
//!
//! Async-signal-safety: the handler touches only atomics (lock-free loads and stores in
//! a static table), the saved previous `sigaction` (written once before the handler is
//! installed, never again), and the `mmap`/`sigaction` system calls. It allocates nothing
//! and takes no lock.
//!
//! Limits: [`SLOTS`] ranges at once (a further [`register`] returns `None`: that mapping
//! is unguarded and its owner relies on its other checks); Linux and Android only (other
//! systems get `None`). Each plugin library links its own copy of this module, so a kind's
//! handler chains to the host's and the other way round: every copy handles its own ranges.

#[cfg(any(target_os = "linux", target_os = "android"))]
mod imp {
    use std::cell::UnsafeCell;
    use std::sync::Once;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// Ranges guarded at once.
    pub const SLOTS: usize = 1024;

    struct Slot {
        /// Claimed by a [`Guard`] (set before `len`, cleared after it).
        used: AtomicBool,
        start: AtomicUsize,
        /// 0 while the slot is being filled or emptied.
        len: AtomicUsize,
        faulted: AtomicBool,
    }

    #[allow(clippy::declare_interior_mutable_const)] // the array initializer only
    const EMPTY: Slot = Slot {
        used: AtomicBool::new(false),
        start: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
        faulted: AtomicBool::new(false),
    };
    static TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];
    static PAGE: AtomicUsize = AtomicUsize::new(0);
    static INSTALL: Once = Once::new();
    static INSTALLED: AtomicBool = AtomicBool::new(false);

    /// The disposition before ours: written once inside `INSTALL`, before our handler can
    /// run, and only read afterwards.
    struct Previous(UnsafeCell<Option<libc::sigaction>>);
    // SAFETY: written once before the handler is installed (the `sigaction` call orders it
    // before any delivery), read-only afterwards.
    unsafe impl Sync for Previous {}
    static PREVIOUS: Previous = Previous(UnsafeCell::new(None));

    /// A registered range; unregisters on drop (drop it before unmapping the range).
    #[derive(Debug)]
    pub struct Guard {
        slot: usize,
    }

    impl Guard {
        /// Whether a read of the range faulted (the file was truncated under it) since
        /// registration. Sticky: the range holds zero pages from then on.
        pub fn faulted(&self) -> bool {
            TABLE[self.slot].faulted.load(Ordering::Acquire)
        }
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            let slot = &TABLE[self.slot];
            slot.len.store(0, Ordering::Release);
            slot.faulted.store(false, Ordering::Release);
            slot.used.store(false, Ordering::Release);
        }
    }

    /// Guards `len` bytes at `start` (a read-only file mapping the caller owns).
    pub fn register(start: *const u8, len: usize) -> Option<Guard> {
        if len == 0 || !install() {
            return None;
        }
        let slot = TABLE
            .iter()
            .position(|s| s.used.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed).is_ok())?;
        let s = &TABLE[slot];
        s.faulted.store(false, Ordering::Release);
        s.start.store(start as usize, Ordering::Release);
        s.len.store(len, Ordering::Release);
        Some(Guard { slot })
    }

    fn install() -> bool {
        INSTALL.call_once(|| {
            // SAFETY: `sysconf` has no preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            let Ok(page) = usize::try_from(page) else { return };
            if !page.is_power_of_two() {
                return;
            }
            PAGE.store(page, Ordering::Release);
            // SAFETY: all-zero is a valid `sigaction` (no handler, empty mask) to fill in.
            let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
            action.sa_sigaction = on_sigbus as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            // SAFETY: as above; an out-parameter for the previous disposition.
            let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: `sa_mask` is a valid sigset_t to empty.
            unsafe { libc::sigemptyset(&mut action.sa_mask) };
            // SAFETY: reading the current disposition only (null new action).
            if unsafe { libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut previous) } != 0 {
                return;
            }
            // SAFETY: our handler is not installed yet, so nothing reads PREVIOUS.
            unsafe { *PREVIOUS.0.get() = Some(previous) };
            // SAFETY: a valid action whose handler is async-signal-safe (module docs).
            if unsafe { libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) } == 0 {
                INSTALLED.store(true, Ordering::Release);
            }
        });
        INSTALLED.load(Ordering::Acquire)
    }

    extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler; `si_addr`
        // is the faulting address for SIGBUS.
        let addr = unsafe { (*info).si_addr() } as usize;
        let page = PAGE.load(Ordering::Acquire);
        for slot in &TABLE {
            let len = slot.len.load(Ordering::Acquire);
            if len == 0 {
                continue;
            }
            let start = slot.start.load(Ordering::Acquire);
            if addr < start || addr - start >= len {
                continue;
            }
            let at = addr & !(page - 1);
            // SAFETY: `at` is the page holding `addr`, inside the caller's read-only
            // mapping (registered, and unregistered before it is unmapped); replacing that
            // one page with zeros changes what the mapping reads, nothing else.
            let mapped = unsafe {
                libc::mmap(
                    at as *mut libc::c_void,
                    page,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if mapped != libc::MAP_FAILED {
                slot.faulted.store(true, Ordering::Release);
                return; // the load is retried and reads zeros
            }
            break;
        }
        chain(sig, info, context);
    }

    /// Hands a SIGBUS that is not ours to the previous disposition.
    fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
        // SAFETY: written before our handler was installed, never again.
        let previous = unsafe { *PREVIOUS.0.get() };
        let Some(previous) = previous else { return };
        let handler = previous.sa_sigaction;
        if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
            // Restore the default and return: the faulting instruction runs again and the
            // default action (terminate with SIGBUS) takes it, as without us.
            // SAFETY: all-zero `sigaction` is SIG_DFL with an empty mask.
            let mut default: libc::sigaction = unsafe { std::mem::zeroed() };
            default.sa_sigaction = libc::SIG_DFL;
            // SAFETY: `sigaction` is async-signal-safe; the action is valid.
            unsafe { libc::sigaction(sig, &default, std::ptr::null_mut()) };
        } else if previous.sa_flags & libc::SA_SIGINFO != 0 {
            // SAFETY: the previous handler was installed with SA_SIGINFO, so it has this
            // signature; we pass the kernel's arguments through unchanged.
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                unsafe { std::mem::transmute(handler) };
            f(sig, info, context);
        } else {
            // SAFETY: a plain handler takes the signal number only.
            let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
            f(sig);
        }
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod imp {
    /// Ranges guarded at once (none on this platform).
    pub const SLOTS: usize = 0;

    /// A registered range (never created on this platform).
    #[derive(Debug)]
    pub struct Guard(());

    impl Guard {
        /// Whether a read of the range faulted.
        pub fn faulted(&self) -> bool {
            false
        }
    }

    /// Guards a range: unavailable here.
    pub fn register(_start: *const u8, _len: usize) -> Option<Guard> {
        None
    }
}

pub use imp::{Guard, SLOTS, register};

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Write;
    use std::os::unix::io::AsRawFd;

    use super::*;

    /// Maps `file` read-only (`len` bytes).
    fn map(file: &std::fs::File, len: usize) -> *const u8 {
        // SAFETY: a fresh read-only shared mapping of an open file.
        let p =
            unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0) };
        assert_ne!(p, libc::MAP_FAILED);
        p.cast()
    }

    /// Truncating a mapped file makes reads past the new end return zeros and sets the
    /// flag, instead of killing the test process with SIGBUS; pages before the end keep
    /// their bytes.
    #[test]
    fn a_truncated_mapping_reads_zeros_and_reports_it() {
        let path = std::env::temp_dir().join(format!("graft-mapguard-{}", std::process::id()));
        let len = 4 * 65536;
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(&vec![0xabu8; len]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let p = map(&file, len);
        let guard = register(p, len).unwrap();
        // SAFETY: `p` maps `len` readable bytes.
        let read = |i: usize| unsafe { std::ptr::read_volatile(p.add(i)) };
        assert_eq!(read(len - 1), 0xab);
        assert!(!guard.faulted());
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(65536).unwrap();
        assert_eq!(read(0), 0xab, "bytes before the new end are intact");
        assert_eq!(read(len - 1), 0, "past the end reads the zero page");
        assert_eq!(read(2 * 65536 + 5), 0);
        assert!(guard.faulted());
        drop(guard);
        // SAFETY: unmapping what `map` mapped, after unregistering it.
        assert_eq!(unsafe { libc::munmap(p as *mut libc::c_void, len) }, 0);
        std::fs::remove_file(&path).unwrap();
    }
}
