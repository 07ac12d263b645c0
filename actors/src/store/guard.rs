//! Store calls that may panic. redb panics on some damaged files (a zeroed or truncated page)
//! instead of returning an error; a panic in the registry would stop every room, and one at
//! start-up would print a backtrace instead of the documented error. [`catch`] turns a panic
//! into an error message.
//!
//! The default panic hook would still print the panic to stderr, so the first call installs a
//! hook that stays quiet for a panic inside [`catch`] on the same thread (the message becomes
//! the error instead) and hands every other panic to the hook that was there before.

use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, PanicHookInfo};
use std::sync::Once;

thread_local! {
    /// Set while this thread runs inside [`catch`], so the hook knows the panic is handled.
    static CATCHING: Cell<bool> = const { Cell::new(false) };
    /// The message of the panic [`catch`] is about to return.
    static CAUGHT: RefCell<Option<String>> = const { RefCell::new(None) };
}

static INSTALL_HOOK: Once = Once::new();

/// Runs `call`; a panic inside it becomes `Err` with the panic's message and location.
pub(crate) fn catch<T>(call: impl FnOnce() -> T) -> Result<T, String> {
    INSTALL_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info: &PanicHookInfo<'_>| {
            if CATCHING.get() {
                let payload = info.payload();
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|text| (*text).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".to_owned());
                let location = info.location().map(|at| format!(" at {}:{}", at.file(), at.line())).unwrap_or_default();
                CAUGHT.set(Some(format!("{message}{location}")));
            } else {
                previous(info);
            }
        }));
    });
    let outer = CATCHING.replace(true);
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(call));
    CATCHING.set(outer);
    outcome.map_err(|_| {
        let caught = CAUGHT.take().unwrap_or_else(|| "no message".to_owned());
        format!("the store library failed an internal check: {}", caught.replace('\n', " "))
    })
}
