//! A small bounded cache of decoded immutable records (directory nodes, part chunk lists).
//!
//! Content-addressed records never change, so a cached value can never be stale; it can only
//! outlive its deletion, which is harmless because nothing that was deleted is still named.
//! When full, an arbitrary half is dropped: simple, bounded, and good enough for the hot set
//! (the directories and parts of the files being read right now).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use parking_lot::Mutex;

pub struct Cache<K, V> {
    map: Mutex<HashMap<K, Arc<V>>>,
    capacity: usize,
}

impl<K: Eq + Hash + Clone, V> Cache<K, V> {
    pub fn new(capacity: usize) -> Cache<K, V> {
        Cache {
            map: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// The cached value for `key`, or `load`'s result (cached when it is `Some`).
    pub fn get_or_load<E>(
        &self,
        key: &K,
        load: impl FnOnce() -> Result<Option<V>, E>,
    ) -> Result<Option<Arc<V>>, E> {
        if let Some(v) = self.map.lock().get(key) {
            return Ok(Some(v.clone()));
        }
        let Some(v) = load()? else { return Ok(None) };
        let v = Arc::new(v);
        let mut map = self.map.lock();
        if map.len() >= self.capacity {
            let drop: Vec<K> = map.keys().take(self.capacity / 2 + 1).cloned().collect();
            for k in drop {
                map.remove(&k);
            }
        }
        map.insert(key.clone(), v.clone());
        Ok(Some(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_once_and_stays_bounded() {
        let c: Cache<u32, String> = Cache::new(4);
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
        assert!(c.map.lock().len() <= 4);
        assert!(c.get_or_load::<()>(&1000, || Ok(None)).unwrap().is_none());
    }
}
