//! A call's parameters as they are stored (Consul KV, the state file) and replayed.
//!
//! Every routed service keeps its call for as long as it is routed, so the form it is kept
//! in is paid for once per service: a sorted list of pairs, not a `BTreeMap`, whose first
//! node alone has room for 11 pairs (~0.5 kB) where most calls give two or three. Stored and
//! compared the same as the map it replaces: a JSON object, in name order.

use std::collections::BTreeMap;
use std::ops::Index;

use serde::{Serialize, Serializer};

/// Parameter names and values, sorted by name, each name once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallParams(Vec<(String, String)>);

impl CallParams {
    /// The value given for `name`.
    pub fn get(&self, name: &str) -> Option<&String> {
        self.find(name).ok().map(|at| &self.0[at].1)
    }

    /// Sets `name` to `value`; returns the value it replaces.
    pub fn insert(&mut self, name: String, value: String) -> Option<String> {
        match self.find(&name) {
            Ok(at) => Some(std::mem::replace(&mut self.0[at].1, value)),
            Err(at) => {
                self.0.insert(at, (name, value));
                None
            }
        }
    }

    /// Keeps only the pairs `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &str) -> bool) {
        self.0.retain(|(name, value)| keep(name, value));
    }

    /// The pairs, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> + '_ {
        self.0.iter().map(|(name, value)| (name, value))
    }

    /// The names, in order.
    pub fn keys(&self) -> impl Iterator<Item = &String> + '_ {
        self.0.iter().map(|(name, _)| name)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The same pairs as a map (the form the store's listing is read into).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.0.iter().cloned().collect()
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(have, _)| have.as_str().cmp(name))
    }
}

impl From<BTreeMap<String, String>> for CallParams {
    fn from(map: BTreeMap<String, String>) -> Self {
        // A map's pairs come out in name order, each name once, and exactly as many as it
        // says: the list is made to size.
        CallParams(map.into_iter().collect())
    }
}

/// `params["name"]`, as with a map: panics when `name` was not given.
impl Index<&str> for CallParams {
    type Output = String;

    fn index(&self, name: &str) -> &String {
        match self.get(name) {
            Some(value) => value,
            None => panic!("no parameter {name:?} in the call"),
        }
    }
}

/// A JSON object, exactly as the map it replaces was written.
impl Serialize for CallParams {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn reads_writes_and_stores_as_the_map_did() {
        let given = map(&[("servicePath", "/b"), ("serviceName", "books"), ("port", "8080")]);
        let mut params = CallParams::from(given.clone());
        assert_eq!(params.len(), 3);
        assert_eq!(params["serviceName"], "books");
        assert_eq!(params.get("nope"), None);
        assert_eq!(params.keys().collect::<Vec<_>>(), given.keys().collect::<Vec<_>>());
        assert_eq!(
            serde_json::to_string(&params).expect("serialises"),
            serde_json::to_string(&given).expect("serialises"),
            "stored byte for byte as before"
        );

        assert_eq!(params.insert("serviceName".into(), "Books".into()), Some("books".into()));
        assert_eq!(params.insert("addResHeader".into(), "X-A 1".into()), None);
        let mut expected = given;
        expected.insert("serviceName".into(), "Books".into());
        expected.insert("addResHeader".into(), "X-A 1".into());
        assert_eq!(params.to_map(), expected);
        assert!(params.iter().map(|(k, _)| k).is_sorted(), "kept in name order");

        params.retain(|name, _| name != "port");
        expected.remove("port");
        assert_eq!(params, CallParams::from(expected));
        assert!(!params.is_empty());
    }
}
