//! The FreeBSD kernel programming interface (KPI) as the Rust modules use it.
//!
//! This is one of the three places the project allows `unsafe` (with the hypercall layer and
//! the peer-memory accessors): every call into the kernel goes through here, each with a
//! `// SAFETY:` argument. It is deliberately thin; protocol logic lives in the `no_std` cores.
//!
//! On the kernel targets (`target_os = "none"`, see `freebsd-build/targets/`) this crate
//! provides the `#[panic_handler]`: a Rust panic in a module becomes a FreeBSD `panic(9)` with
//! the Rust message, because unwinding does not exist in the kernel and silently continuing
//! after a broken invariant is worse than a crash dump. Protocol cores never panic on peer
//! input (they move the device to an error state), so this is reached only on our own bugs.
#![no_std]

#[cfg(target_os = "none")]
mod panic_handler {
    use core::fmt::Write;

    extern "C" {
        /// `void panic(const char *fmt, ...) __dead2;` from `<sys/systm.h>`.
        fn panic(fmt: *const core::ffi::c_char, ...) -> !;
    }

    /// Formats into a fixed buffer, truncating, always leaving room for the terminating NUL.
    struct MessageBuf {
        bytes: [u8; 256],
        len: usize,
    }

    impl Write for MessageBuf {
        fn write_str(&mut self, text: &str) -> core::fmt::Result {
            let room = self.bytes.len() - 1 - self.len;
            let take = text.len().min(room);
            self.bytes[self.len..self.len + take].copy_from_slice(&text.as_bytes()[..take]);
            self.len += take;
            Ok(())
        }
    }

    #[panic_handler]
    fn on_panic(info: &core::panic::PanicInfo<'_>) -> ! {
        let mut message = MessageBuf {
            bytes: [0; 256],
            len: 0,
        };
        // Formatting into MessageBuf cannot fail; a truncated message is still useful.
        let _ = write!(message, "{info}");
        // Interior NULs would only shorten the printed text.
        message.bytes[message.len] = 0;
        // SAFETY: both pointers are NUL-terminated C strings that live until `panic` (which
        // never returns) is done with them, and "%s" consumes exactly the one vararg given.
        unsafe { panic(c"rust: %s".as_ptr(), message.bytes.as_ptr()) }
    }
}
