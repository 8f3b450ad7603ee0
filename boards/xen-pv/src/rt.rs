//! The kernel's panic handler. The personality stub and the memory functions come from
//! boards/nostd-check/src/memfns.rs (`main.rs` includes it).

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    crate::pv::panic_report(info)
}
