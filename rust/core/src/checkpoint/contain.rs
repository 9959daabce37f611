//! Containing panics of the storage engine: a panic inside redb (a damaged file can make it
//! panic) becomes an error naming the file, and prints nothing.
//!
//! `catch_unwind` stops the unwinding; the process-wide panic hook would still print the
//! message to stderr. A hook installed once, on first use, stays silent for panics raised
//! inside [`contain`] on the current thread — keeping their message for the error — and
//! passes every other panic to the hook that was installed before it.

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    static CONTAINED: Cell<bool> = const { Cell::new(false) };
    static MESSAGE: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn install_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if CONTAINED.with(Cell::get) {
                let text = match info.payload().downcast_ref::<&str>() {
                    Some(s) => (*s).to_owned(),
                    None => match info.payload().downcast_ref::<String>() {
                        Some(s) => s.clone(),
                        None => "a panic without a message".to_owned(),
                    },
                };
                let place = info.location().map(|l| format!(" at {}:{}", l.file(), l.line()));
                MESSAGE.with(|m| *m.borrow_mut() = Some(text + &place.unwrap_or_default()));
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs `f`; a panic inside it is returned as its message instead of unwinding further, and
/// nothing is printed.
pub fn contain<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_hook();
    let outer = CONTAINED.with(|c| c.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    CONTAINED.with(|c| c.set(outer));
    result.map_err(|_| {
        MESSAGE.with(|m| m.borrow_mut().take()).unwrap_or_else(|| "a panic".to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contained_panic_is_an_error_with_its_message() {
        let r: Result<(), String> = contain(|| panic!("page 7 is damaged"));
        let msg = r.unwrap_err();
        assert!(msg.starts_with("page 7 is damaged at "), "{msg}");
        assert_eq!(contain(|| 5), Ok(5));
    }

    #[test]
    fn nested_containment_restores_the_outer_state() {
        let r = contain(|| {
            let inner: Result<(), String> = contain(|| panic!("inner"));
            assert!(inner.is_err());
            CONTAINED.with(Cell::get)
        });
        assert_eq!(r, Ok(true));
        assert!(!CONTAINED.with(Cell::get));
    }
}
