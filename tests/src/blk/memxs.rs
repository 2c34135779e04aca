//! A minimal in-memory xenstore for fast block-driver tests and fuzzing: nodes in a map,
//! watches that fire on changes at or below them (and once on registration), no
//! permissions, no transactions. It implements `xen_xenbus::XenStore`, so the real `Bus`
//! and the drivers' control paths run on it unchanged; [`MemXs::take_event`] hands out the
//! queued watch events for the test to dispatch.

use std::collections::{BTreeMap, VecDeque};

use xen_xenbus::bus::XenStore;
use xen_xenbus::{Error, Reply, Request, Store, WatchEvent, WatchId, XsError};

/// The store (see the module docs).
#[derive(Debug, Default)]
pub struct MemXs {
    nodes: BTreeMap<String, Vec<u8>>,
    watches: Vec<(WatchId, String)>,
    events: VecDeque<(WatchId, WatchEvent)>,
    next_watch: u32,
    /// Writes performed (by anyone).
    pub writes: u64,
}

fn below(path: &str, dir: &str) -> bool {
    path.len() > dir.len() && path.starts_with(dir) && path.as_bytes().get(dir.len()) == Some(&b'/')
}

impl MemXs {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        MemXs::default()
    }

    /// Whether `path` exists (as a node or as the parent of one).
    #[must_use]
    pub fn exists(&self, path: &str) -> bool {
        self.nodes.contains_key(path)
            || self
                .nodes
                .range(path.to_string()..)
                .next()
                .is_some_and(|(k, _)| below(k, path))
    }

    /// A node's value.
    #[must_use]
    pub fn get(&self, path: &str) -> Option<&[u8]> {
        self.nodes.get(path).map(Vec::as_slice)
    }

    /// A node's value as text.
    #[must_use]
    pub fn get_str(&self, path: &str) -> Option<String> {
        self.get(path)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// Sets a node (firing watches).
    pub fn set(&mut self, path: &str, value: &[u8]) {
        self.writes += 1;
        self.nodes.insert(path.to_string(), value.to_vec());
        self.fire(path, false);
    }

    /// Removes a subtree (firing watches).
    pub fn remove(&mut self, path: &str) {
        let doomed: Vec<String> = self
            .nodes
            .keys()
            .filter(|k| *k == path || below(k, path))
            .cloned()
            .collect();
        for k in doomed {
            self.nodes.remove(&k);
        }
        self.fire(path, true);
    }

    fn fire(&mut self, changed: &str, removed: bool) {
        for (id, w) in &self.watches {
            if changed == w || below(changed, w) || (removed && below(w, changed)) {
                self.events.push_back((
                    *id,
                    WatchEvent {
                        path: changed.to_string(),
                        missed: false,
                    },
                ));
            }
        }
    }

    /// The next queued watch event.
    pub fn take_event(&mut self) -> Option<(WatchId, WatchEvent)> {
        self.events.pop_front()
    }

    /// Watch events queued.
    #[must_use]
    pub fn pending_events(&self) -> usize {
        self.events.len()
    }
}

impl Store for MemXs {
    fn call(&mut self, req: &Request<'_>) -> Result<Reply, Error> {
        match req {
            Request::Read { path } => match self.nodes.get(*path) {
                Some(v) => Ok(Reply::Value(v.clone())),
                None if self.exists(path) => Ok(Reply::Value(Vec::new())),
                None => Err(Error::Xs(XsError::NoEnt)),
            },
            Request::Write { path, value } => {
                self.set(path, value);
                Ok(Reply::Ack)
            }
            Request::Mkdir { path } => {
                if !self.exists(path) {
                    self.set(path, b"");
                }
                Ok(Reply::Ack)
            }
            Request::Rm { path } => {
                self.remove(path);
                Ok(Reply::Ack)
            }
            Request::Directory { path } => {
                if !self.exists(path) {
                    return Err(Error::Xs(XsError::NoEnt));
                }
                let mut names: Vec<String> = Vec::new();
                for k in self.nodes.keys() {
                    if below(k, path) {
                        let rest = &k[path.len() + 1..];
                        let name = rest.split('/').next().unwrap_or("").to_string();
                        if names.last() != Some(&name) && !names.contains(&name) {
                            names.push(name);
                        }
                    }
                }
                Ok(Reply::Names(names))
            }
            _ => Err(Error::Xs(XsError::NoSys)),
        }
    }
}

impl XenStore for MemXs {
    fn watch(&mut self, path: &str) -> Result<WatchId, Error> {
        self.next_watch += 1;
        let id = WatchId(self.next_watch);
        self.watches.push((id, path.to_string()));
        self.events.push_back((
            id,
            WatchEvent {
                path: path.to_string(),
                missed: false,
            },
        ));
        Ok(id)
    }

    fn unwatch(&mut self, id: WatchId) -> Result<(), Error> {
        self.watches.retain(|(w, _)| *w != id);
        self.events.retain(|(w, _)| *w != id);
        Ok(())
    }
}
