//! The firmware entry point (Cortex-M, `--features firmware`) and a host `main` that runs
//! the same [`graft_mcu_example::run`].

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

/// The input row the example runs.
const X: [f32; graft_mcu_example::INPUTS] = [0.5, -1.0, 0.25, 2.0, 0.0, -0.75, 1.5, 1.0];

#[cfg(all(target_os = "none", not(feature = "firmware")))]
compile_error!("build the firmware with `--features firmware` (defmt logging and panic handler)");

#[cfg(target_os = "none")]
mod firmware {
    use core::mem::MaybeUninit;

    use cortex_m_rt::entry;
    use embedded_alloc::LlffHeap as Heap;
    use {defmt_rtt as _, panic_probe as _};

    #[global_allocator]
    static HEAP: Heap = Heap::empty();

    const HEAP_SIZE: usize = 32 * 1024;

    #[entry]
    fn main() -> ! {
        static mut HEAP_MEM: [MaybeUninit<u8>; HEAP_SIZE] = [MaybeUninit::uninit(); HEAP_SIZE];
        // `#[entry]` turns this `static mut` into a `&'static mut` handed out exactly once.
        let region = HEAP_MEM.as_mut_ptr() as usize;
        // SAFETY: `init` runs once, before any allocation, over a region nothing else uses.
        unsafe { HEAP.init(region, HEAP_SIZE) };
        match graft_mcu_example::run(&super::X) {
            Ok(y) => defmt::info!("graft: y = {}", y),
            Err(e) => defmt::error!("graft: {}", e),
        }
        loop {
            cortex_m::asm::wfi();
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    match graft_mcu_example::run(&X) {
        Ok(y) => println!("y = {y:?}"),
        Err(e) => {
            eprintln!("graft: {e}");
            std::process::exit(1);
        }
    }
}
