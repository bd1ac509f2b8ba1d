//! A fault-injecting, in-memory [`Storage`] for tests.
//!
//! It models what a crash can do to a real file system: each file keeps its
//! current bytes and the bytes it had at its last `sync_data`; the directory
//! keeps its current names and the names it had at its last `sync_dir`. A
//! [`FaultStorage::power_cut`] throws away what was not made durable (file
//! contents, lengths, creations, renames and removals), optionally keeping a
//! random, possibly zero-filled part of the unsynced tail, as a disk that
//! wrote some pages and not others would. Besides that it can fail every
//! operation after a countdown, flip bits, and truncate files.
//!
//! It is a test tool that lives in the library so that integration tests and
//! benchmarks can use it; the broker never constructs one.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::storage::{Storage, StorageFile};

#[derive(Debug, Default)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Debug, Default)]
struct State {
    next_inode: u64,
    inodes: BTreeMap<u64, Inode>,
    /// Current namespace: path -> inode.
    names: BTreeMap<PathBuf, u64>,
    /// Namespace as of the last `sync_dir` of each directory.
    durable_names: BTreeMap<PathBuf, u64>,
    dirs: Vec<PathBuf>,
    /// Operations left before every operation fails; `None` = no limit.
    ops_left: Option<u64>,
    ops: u64,
}

/// The in-memory, fault-injecting storage. Clones share the same state.
#[derive(Debug, Clone, Default)]
pub struct FaultStorage {
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct FaultFile {
    state: Arc<Mutex<State>>,
    inode: u64,
}

fn injected() -> io::Error {
    io::Error::other("injected I/O failure")
}

/// A small deterministic generator (SplitMix64), so a power cut is
/// replayable from its seed.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

impl State {
    fn tick(&mut self) -> io::Result<()> {
        self.ops += 1;
        match &mut self.ops_left {
            Some(0) => Err(injected()),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl FaultStorage {
    /// An empty file system.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every operation after the next `n` fail with an I/O error.
    pub fn fail_after(&self, n: u64) {
        self.state.lock().ops_left = Some(n);
    }

    /// Stops injecting failures.
    pub fn heal(&self) {
        self.state.lock().ops_left = None;
    }

    /// Operations performed so far.
    pub fn op_count(&self) -> u64 {
        self.state.lock().ops
    }

    /// Simulates losing power: every file reverts to its last synced bytes
    /// and the namespace to its last synced state. With `torn = Some(seed)`
    /// a random prefix of each file's unsynced appended bytes survives, with
    /// a random part of that prefix zeroed (pages whose data never landed).
    /// Open handles keep working on the new state, like a fresh mount.
    pub fn power_cut(&self, torn: Option<u64>) {
        let mut st = self.state.lock();
        let mut rng = torn.map(SplitMix::new);
        st.names = st.durable_names.clone();
        for inode in st.inodes.values_mut() {
            let mut next = inode.durable.clone();
            if let Some(rng) = rng.as_mut() {
                let d = inode.durable.len();
                if inode.data.len() > d && inode.data[..d] == inode.durable[..] {
                    let extra = rng.below((inode.data.len() - d) as u64 + 1) as usize;
                    next.extend_from_slice(&inode.data[d..d + extra]);
                    if extra > 0 && rng.below(2) == 0 {
                        let start = d + rng.below(extra as u64) as usize;
                        let end = start + rng.below((next.len() - start) as u64 + 1) as usize;
                        next[start..end].fill(0);
                    }
                }
            }
            inode.data = next.clone();
            inode.durable = next;
        }
        let live: Vec<u64> = st.names.values().copied().collect();
        st.inodes.retain(|id, _| live.contains(id));
    }

    /// Flips one bit of a file, durably (media corruption).
    pub fn flip_bit(&self, path: &Path, byte: u64, bit: u8) -> io::Result<()> {
        let mut st = self.state.lock();
        let id = *st.names.get(path).ok_or_else(|| not_found(path))?;
        let inode = st.inodes.get_mut(&id).ok_or_else(|| not_found(path))?;
        let b = byte as usize;
        if b >= inode.data.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "flip past end of file",
            ));
        }
        inode.data[b] ^= 1 << (bit % 8);
        if b < inode.durable.len() {
            inode.durable[b] ^= 1 << (bit % 8);
        }
        Ok(())
    }

    /// Truncates a file, durably.
    pub fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut st = self.state.lock();
        let id = *st.names.get(path).ok_or_else(|| not_found(path))?;
        let inode = st.inodes.get_mut(&id).ok_or_else(|| not_found(path))?;
        inode.data.truncate(len as usize);
        inode.durable.truncate(len as usize);
        Ok(())
    }

    /// Current length of a file, if it exists.
    pub fn file_len(&self, path: &Path) -> Option<u64> {
        let st = self.state.lock();
        let id = st.names.get(path)?;
        st.inodes.get(id).map(|i| i.data.len() as u64)
    }

    /// Paths of every file, sorted.
    pub fn files(&self) -> Vec<PathBuf> {
        self.state.lock().names.keys().cloned().collect()
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

impl StorageFile for FaultFile {
    fn read_exact_at(&self, buf: &mut [u8], position: u64) -> io::Result<()> {
        let mut st = self.state.lock();
        st.tick()?;
        let inode = st.inodes.get(&self.inode).ok_or_else(injected)?;
        let p = position as usize;
        if p.checked_add(buf.len())
            .is_none_or(|end| end > inode.data.len())
        {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past end of file",
            ));
        }
        buf.copy_from_slice(&inode.data[p..p + buf.len()]);
        Ok(())
    }
    fn write_all_at(&self, buf: &[u8], position: u64) -> io::Result<()> {
        let mut st = self.state.lock();
        st.tick()?;
        let inode = st.inodes.get_mut(&self.inode).ok_or_else(injected)?;
        let p = position as usize;
        if inode.data.len() < p + buf.len() {
            inode.data.resize(p + buf.len(), 0);
        }
        inode.data[p..p + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        let mut st = self.state.lock();
        st.tick()?;
        let inode = st.inodes.get_mut(&self.inode).ok_or_else(injected)?;
        inode.durable = inode.data.clone();
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.state.lock();
        st.tick()?;
        let inode = st.inodes.get_mut(&self.inode).ok_or_else(injected)?;
        inode.data.resize(len as usize, 0);
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        let st = self.state.lock();
        let inode = st.inodes.get(&self.inode).ok_or_else(injected)?;
        Ok(inode.data.len() as u64)
    }
}

impl Storage for FaultStorage {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let mut st = self.state.lock();
        st.tick()?;
        let id = match st.names.get(path) {
            Some(id) => *id,
            None if create => {
                let parent = path.parent().unwrap_or(Path::new(""));
                if !st.dirs.iter().any(|d| d == parent) {
                    return Err(not_found(parent));
                }
                st.next_inode += 1;
                let id = st.next_inode;
                st.inodes.insert(id, Inode::default());
                st.names.insert(path.to_path_buf(), id);
                id
            }
            None => return Err(not_found(path)),
        };
        Ok(Arc::new(FaultFile {
            state: self.state.clone(),
            inode: id,
        }))
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        st.tick()?;
        // Directories are modelled as always durable: the log creates its
        // directory once, before anything that matters is written.
        let mut p = Some(path);
        while let Some(d) = p {
            if !st.dirs.iter().any(|x| x == d) {
                st.dirs.push(d.to_path_buf());
            }
            p = d.parent();
        }
        Ok(())
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut st = self.state.lock();
        st.tick()?;
        if !st.dirs.iter().any(|d| d == dir) {
            return Err(not_found(dir));
        }
        Ok(st
            .names
            .keys()
            .chain(st.dirs.iter())
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        st.tick()?;
        st.names.remove(path);
        Ok(())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        st.tick()?;
        let id = st.names.remove(from).ok_or_else(|| not_found(from))?;
        st.names.insert(to.to_path_buf(), id);
        Ok(())
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        st.tick()?;
        let in_dir = |p: &PathBuf| p.parent() == Some(dir);
        let mut durable: BTreeMap<PathBuf, u64> = st
            .durable_names
            .iter()
            .filter(|(p, _)| !in_dir(p))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (p, i) in st.names.iter().filter(|(p, _)| in_dir(p)) {
            durable.insert(p.clone(), *i);
        }
        st.durable_names = durable;
        Ok(())
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        let st = self.state.lock();
        Ok(st.names.contains_key(path) || st.dirs.iter().any(|d| d == path))
    }
    fn is_dir(&self, path: &Path) -> io::Result<bool> {
        Ok(self.state.lock().dirs.iter().any(|d| d == path))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn power_cut_drops_unsynced_bytes_and_names() {
        let fs = FaultStorage::new();
        let dir = Path::new("/d");
        fs.create_dir_all(dir).unwrap();
        let a = fs.open(&dir.join("a"), true).unwrap();
        a.write_all_at(b"hello", 0).unwrap();
        a.sync_data().unwrap();
        fs.sync_dir(dir).unwrap();
        a.write_all_at(b" world", 5).unwrap();
        let b = fs.open(&dir.join("b"), true).unwrap();
        b.write_all_at(b"x", 0).unwrap();
        b.sync_data().unwrap(); // synced data, but its name was never synced
        fs.power_cut(None);
        assert_eq!(fs.files(), vec![dir.join("a")]);
        let mut buf = vec![0u8; a.len().unwrap() as usize];
        a.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(buf, b"hello");
    }

    #[test]
    fn unsynced_remove_comes_back_after_power_cut() {
        let fs = FaultStorage::new();
        let dir = Path::new("/d");
        fs.create_dir_all(dir).unwrap();
        fs.open(&dir.join("a"), true).unwrap();
        fs.sync_dir(dir).unwrap();
        fs.remove(&dir.join("a")).unwrap();
        assert!(!fs.exists(&dir.join("a")).unwrap());
        fs.power_cut(None);
        assert!(fs.exists(&dir.join("a")).unwrap());
    }

    #[test]
    fn fail_after_counts_operations() {
        let fs = FaultStorage::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        let f = fs.open(Path::new("/d/a"), true).unwrap();
        fs.fail_after(1);
        f.write_all_at(b"a", 0).unwrap();
        assert!(f.write_all_at(b"b", 1).is_err());
        assert!(f.sync_data().is_err());
        fs.heal();
        f.sync_data().unwrap();
    }
}
