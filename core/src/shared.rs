//! Equal values held once.
//!
//! A thousand devices of one model carry the same per-property tables (the
//! live view's names and positions, a Modbus device's points and read
//! plan). An [`Interner`] hands every holder of an equal table the same
//! `Arc`, so the table costs memory once per model, not once per device.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

/// The set of values handed out; one that no holder keeps any more is
/// dropped the next time a new value comes in.
#[derive(Debug)]
pub struct Interner<T: ?Sized> {
    known: Mutex<HashSet<Arc<T>>>,
}

impl<T: ?Sized> Default for Interner<T> {
    fn default() -> Self {
        Interner {
            known: Mutex::default(),
        }
    }
}

impl<T: ?Sized + Eq + Hash> Interner<T> {
    /// The one `Arc` of values equal to `value`.
    pub fn share(&self, value: Box<T>) -> Arc<T> {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(same) = known.get(&*value) {
            return same.clone();
        }
        // What nobody holds any more goes (a model changed, its devices
        // were removed): the set stays as large as what is configured.
        known.retain(|v| Arc::strong_count(v) > 1);
        let value: Arc<T> = Arc::from(value);
        known.insert(value.clone());
        value
    }

    /// Distinct values held.
    pub fn len(&self) -> usize {
        self.known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_share_one_arc_and_unheld_ones_go() {
        let interner: Interner<[u32]> = Interner::default();
        let a = interner.share(vec![1, 2, 3].into_boxed_slice());
        let b = interner.share(vec![1, 2, 3].into_boxed_slice());
        assert!(Arc::ptr_eq(&a, &b));
        let c = interner.share(vec![4].into_boxed_slice());
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(interner.len(), 2);
        drop(c);
        // `[4]` is held by nobody now: it goes when the next new value comes.
        let _d = interner.share(vec![5].into_boxed_slice());
        assert_eq!(interner.len(), 2);
        drop((a, b));
        let _e = interner.share(vec![6].into_boxed_slice());
        assert_eq!(interner.len(), 2, "[1, 2, 3] went; [5] and [6] are held");
    }
}
