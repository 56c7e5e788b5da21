//! A small bounded cache of decoded records (directory nodes, part chunk lists, chunk locations).
//!
//! Content-addressed records never change, so a cached node or part can never be stale; it can
//! only outlive its deletion, which is harmless because nothing that was deleted is still named.
//! Chunk locations do change (gc moves chunks): their users verify every read against the
//! chunk's hash and look the location up again when it fails.
//! The bound is a weight (roughly the bytes a value takes in memory, as the owner estimates it),
//! not a count: a directory of ten thousand files weighs what it costs. When full, an arbitrary
//! half is dropped: simple, bounded, and good enough for the hot set (the directories and parts
//! of the files being read right now).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use parking_lot::Mutex;

/// Each value with its weight, and the total weight.
type Entries<K, V> = (HashMap<K, (Arc<V>, usize)>, usize);

pub struct Cache<K, V> {
    map: Mutex<Entries<K, V>>,
    max_weight: usize,
    weigh: fn(&V) -> usize,
}

impl<K: Eq + Hash + Clone, V> Cache<K, V> {
    /// A cache holding at most `max_weight` of values as weighed by `weigh`.
    pub fn new(max_weight: usize, weigh: fn(&V) -> usize) -> Cache<K, V> {
        Cache {
            map: Mutex::new((HashMap::new(), 0)),
            max_weight: max_weight.max(1),
            weigh,
        }
    }

    /// The cached value for `key`, or `load`'s result (cached when it is `Some`).
    pub fn get_or_load<E>(
        &self,
        key: &K,
        load: impl FnOnce() -> Result<Option<V>, E>,
    ) -> Result<Option<Arc<V>>, E> {
        if let Some(v) = self.get(key) {
            return Ok(Some(v));
        }
        let Some(v) = load()? else { return Ok(None) };
        Ok(Some(self.insert(key, v)))
    }

    /// The cached value for `key`, if any.
    pub fn get(&self, key: &K) -> Option<Arc<V>> {
        self.map.lock().0.get(key).map(|(v, _)| v.clone())
    }

    /// Forgets `key`.
    pub fn remove(&self, key: &K) {
        let mut guard = self.map.lock();
        let (map, total) = &mut *guard;
        if let Some((_, w)) = map.remove(key) {
            *total -= w;
        }
    }

    /// Forgets everything.
    pub fn clear(&self) {
        *self.map.lock() = (HashMap::new(), 0);
    }

    /// Caches `v` under `key` (replacing what was there) unless it is too big to keep.
    pub fn insert(&self, key: &K, v: V) -> Arc<V> {
        let weight = (self.weigh)(&v).max(1);
        let v = Arc::new(v);
        if weight > self.max_weight / 2 {
            return v; // too big to keep
        }
        let mut guard = self.map.lock();
        let (map, total) = &mut *guard;
        if *total + weight > self.max_weight {
            let keys: Vec<K> = map.keys().cloned().collect();
            for k in keys {
                if *total + weight <= self.max_weight / 2 {
                    break;
                }
                if let Some((_, w)) = map.remove(&k) {
                    *total -= w;
                }
            }
        }
        if let Some((_, old)) = map.insert(key.clone(), (v.clone(), weight)) {
            *total -= old;
        }
        *total += weight;
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_once_and_stays_bounded() {
        let c: Cache<u32, String> = Cache::new(8, |s| s.len());
        let mut loads = 0;
        for _ in 0..3 {
            let v = c.get_or_load::<()>(&1, || {
                loads += 1;
                Ok(Some("one".into()))
            });
            assert_eq!(v.unwrap().as_deref().map(String::as_str), Some("one"));
        }
        assert_eq!(loads, 1);
        for k in 0..100 {
            c.get_or_load::<()>(&k, || Ok(Some(k.to_string()))).unwrap();
        }
        {
            let guard = c.map.lock();
            let (map, total) = &*guard;
            assert!(*total <= 8 && map.values().map(|(_, w)| w).sum::<usize>() == *total);
        }
        assert!(c.get_or_load::<()>(&1000, || Ok(None)).unwrap().is_none());
        c.clear();
        assert!(c.get(&99).is_none() && c.map.lock().1 == 0);
    }
}
