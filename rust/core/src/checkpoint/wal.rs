//! The write-ahead log of a [`RedbStore`](super::RedbStore) opened with
//! [`Durability::Immediate`](super::Durability::Immediate).
//!
//! A redb commit that must reach the disk writes several pages at scattered offsets (leaf,
//! branches, allocator state, header) before its fsync. The log turns each group commit into
//! one sequential write plus one `fdatasync` into a file whose blocks are already allocated
//! (zero-filled in chunks, so the sync rarely has file metadata to write). The writer thread:
//!
//! 1. applies a batch in a redb write transaction (conflict checks, inserts, clears);
//! 2. appends one log record holding the batch's mutations, and `fdatasync`s the log: the
//!    batch is durable, its requests complete;
//! 3. commits the redb transaction with redb's `Durability::None` (visible in-process,
//!    persisted by the next durable redb commit);
//! 4. every [`CHECKPOINT_BATCHES`] batches or [`CHECKPOINT_BYTES`] bytes of log, and at close,
//!    commits a batch durably in redb instead (a *checkpoint*), and starts the log over.
//!
//! ## Which records belong to the database
//!
//! The redb file keeps, in its `cano_meta` table, a random store id and the log's current
//! *generation*. Every record's CRC covers `store id ‖ generation ‖ length ‖ payload`, so a
//! record only counts if it was written for this database, in the generation the database
//! expects. A checkpoint bumps the generation **in the same durable redb transaction** that
//! persists the log's rows: from then on every record in the file is stale, with no write to
//! the log, and the next records overwrite it from offset 0. Opening a store replays the
//! records of the current generation, from offset 0 up to the first one that is torn,
//! truncated, zero or fails its CRC (the tail a crash can leave: never an acknowledged one,
//! since a batch completes only after its `fdatasync`), then bumps the generation in the same
//! durable commit. Replay is idempotent: a record re-applied over a database that already
//! holds it (a crash between the checkpoint commit and the next record) leaves the same rows,
//! because each record replays its mutations in their original order (inserts overwrite,
//! clears remove a range).
//!
//! ## Record layout
//!
//! ```text
//! u32 LE  payload length (> 0)
//! u32 LE  CRC-32 (IEEE) of: store id (u64 LE) ‖ generation (u64 LE) ‖ length (u32 LE) ‖ payload
//! payload: one or more operations, in the order the batch applied them
//!   u8 1 = append: varint id length, id bytes, varint sequence, varint envelope length,
//!                  envelope bytes (the row's value, see [`codec`](super::codec))
//!   u8 2 = clear:  varint id length, id bytes
//! ```

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::error::{path_text, StoreError};

/// The log grows (zero-filled, then fsynced) by this many bytes at a time.
pub const CHUNK_BYTES: u64 = 1 << 20;
/// A checkpoint is due once the log holds this many bytes...
pub const CHECKPOINT_BYTES: u64 = 4 << 20;
/// ...or this many records (few in unit tests, so that they cross checkpoints).
pub const CHECKPOINT_BATCHES: u64 = if cfg!(test) { 16 } else { 4096 };

const HEADER: usize = 8;
const OP_APPEND: u8 = 1;
const OP_CLEAR: u8 = 2;

/// One mutation read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalOp {
    Append { workflow_id: String, sequence: u64, envelope: Vec<u8> },
    Clear { workflow_id: String },
}

/// The log file next to a database: `<path>.wal`.
pub fn wal_path(db_path: &Path) -> PathBuf {
    let mut name = db_path.as_os_str().to_owned();
    name.push(".wal");
    PathBuf::from(name)
}

fn crc(store_id: u64, generation: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&store_id.to_le_bytes());
    h.update(&generation.to_le_bytes());
    h.update(&(payload.len() as u32).to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// The valid records of `generation` at the start of `bytes`, each as its operations, and
/// the offset where the valid prefix ends. Stops at the first record that is truncated,
/// zero-length or fails its CRC. A record whose CRC is right but whose payload cannot be
/// parsed was written by something else than this code: that is an error, not a tail.
pub fn read_records(
    bytes: &[u8],
    store_id: u64,
    generation: u64,
) -> Result<(Vec<Vec<WalOp>>, usize), String> {
    let mut at = 0usize;
    let mut records = Vec::new();
    while bytes.len() - at >= HEADER {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let sum = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        if len == 0 || len > bytes.len() - at - HEADER {
            break;
        }
        let payload = &bytes[at + HEADER..at + HEADER + len];
        if crc(store_id, generation, payload) != sum {
            break;
        }
        let ops = parse_payload(payload)
            .map_err(|reason| format!("record at offset {at} has a valid CRC but {reason}"))?;
        records.push(ops);
        at += HEADER + len;
    }
    Ok((records, at))
}

fn parse_payload(payload: &[u8]) -> Result<Vec<WalOp>, String> {
    let mut r = Cursor { bytes: payload, at: 0 };
    let mut ops = Vec::new();
    while r.at < payload.len() {
        let tag = r.byte()?;
        let workflow_id = String::from_utf8(r.bytes()?.to_vec())
            .map_err(|_| "holds a workflow id that is not UTF-8".to_owned())?;
        ops.push(match tag {
            OP_APPEND => {
                let sequence = r.varint()?;
                let envelope = r.bytes()?.to_vec();
                WalOp::Append { workflow_id, sequence, envelope }
            }
            OP_CLEAR => WalOp::Clear { workflow_id },
            other => return Err(format!("holds an unknown operation {other}")),
        });
    }
    Ok(ops)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn byte(&mut self) -> Result<u8, String> {
        let b = *self.bytes.get(self.at).ok_or("is truncated")?;
        self.at += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let low = u64::from(b & 0x7f);
            if shift == 63 && low > 1 {
                break;
            }
            value |= low << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("holds an invalid varint".into())
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.varint()?;
        let remaining = self.bytes.len() - self.at;
        let len = usize::try_from(len)
            .ok()
            .filter(|&n| n <= remaining)
            .ok_or("holds a length past its end")?;
        let slice = &self.bytes[self.at..self.at + len];
        self.at += len;
        Ok(slice)
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Reads the whole log at `path` (empty if there is none).
pub fn read_file(path: &Path) -> Result<Vec<u8>, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_error(path, "read the write-ahead log", &e)),
    }
}

fn io_error(path: &Path, what: &str, e: &std::io::Error) -> StoreError {
    StoreError::Io { path: path_text(path), message: format!("{what}: {e}") }
}

/// The open log of a store, owned by its writer thread.
pub struct Wal {
    file: File,
    path: PathBuf,
    store_id: u64,
    generation: u64,
    /// Where the next record goes; everything before it is this generation's records.
    offset: u64,
    /// Bytes of the file known to be allocated and zero-filled or written.
    allocated: u64,
    records: u64,
    /// The record being built: header placeholder, then operations.
    buf: Vec<u8>,
}

impl Wal {
    /// Opens (creating it if needed) the log at `path` for writing records of `generation`
    /// from offset 0. Whatever the file holds must already be stale (replayed, and the
    /// generation bumped durably).
    pub fn open(path: PathBuf, store_id: u64, generation: u64) -> Result<Wal, StoreError> {
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_error(&path, "open the write-ahead log", &e))?;
        if !existed {
            // The records will be acknowledged as durable: the file's name must be too.
            sync_parent(&path)?;
        }
        let allocated =
            file.metadata().map_err(|e| io_error(&path, "stat the write-ahead log", &e))?.len();
        Ok(Wal {
            file,
            path,
            store_id,
            generation,
            offset: 0,
            allocated,
            records: 0,
            buf: Vec::with_capacity(4096),
        })
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// True once a checkpoint should be taken.
    pub fn checkpoint_due(&self) -> bool {
        self.offset >= CHECKPOINT_BYTES || self.records >= CHECKPOINT_BATCHES
    }

    /// Records written since the last checkpoint.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Starts a new record, dropping any operation staged for an unwritten one.
    pub fn begin(&mut self) {
        self.buf.clear();
        self.buf.extend_from_slice(&[0; HEADER]);
    }

    /// True if the staged record holds no operation.
    pub fn is_empty(&self) -> bool {
        self.buf.len() <= HEADER
    }

    pub fn push_append(&mut self, workflow_id: &str, sequence: u64, envelope: &[u8]) {
        self.buf.push(OP_APPEND);
        put_bytes(&mut self.buf, workflow_id.as_bytes());
        put_varint(&mut self.buf, sequence);
        put_bytes(&mut self.buf, envelope);
    }

    pub fn push_clear(&mut self, workflow_id: &str) {
        self.buf.push(OP_CLEAR);
        put_bytes(&mut self.buf, workflow_id.as_bytes());
    }

    /// Makes sure a record of up to `payload` bytes fits in the allocated file.
    pub fn reserve(&mut self, payload: u64) -> Result<(), StoreError> {
        let end = self.offset + HEADER as u64 + payload;
        if end > self.allocated {
            self.grow(end)?;
        }
        Ok(())
    }

    /// Writes the staged record after the last one. Not durable until [`sync`](Self::sync).
    /// On failure nothing counts as written: the next record goes to the same offset.
    pub fn write(&mut self) -> Result<(), StoreError> {
        let payload_len = self.buf.len() - HEADER;
        let len = u32::try_from(payload_len).map_err(|_| StoreError::Io {
            path: path_text(&self.path),
            message: format!("a batch of {payload_len} bytes is too large for one log record"),
        })?;
        let sum = crc(self.store_id, self.generation, &self.buf[HEADER..]);
        self.buf[..4].copy_from_slice(&len.to_le_bytes());
        self.buf[4..8].copy_from_slice(&sum.to_le_bytes());
        let end = self.offset + self.buf.len() as u64;
        if end > self.allocated {
            self.grow(end)?;
        }
        write_all_at(&self.file, &self.buf, self.offset)
            .map_err(|e| io_error(&self.path, "write the write-ahead log", &e))?;
        self.offset = end;
        self.records += 1;
        Ok(())
    }

    /// `fdatasync`: every record written so far is durable.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.file.sync_data().map_err(|e| io_error(&self.path, "fdatasync the write-ahead log", &e))
    }

    /// Zero-fills the file up to a chunk boundary past `end`, and makes the new size durable,
    /// so that syncing a record later has no block allocation or size change to persist.
    fn grow(&mut self, end: u64) -> Result<(), StoreError> {
        let target = end.div_ceil(CHUNK_BYTES) * CHUNK_BYTES;
        let zeros = vec![0u8; 64 << 10];
        let mut at = self.allocated;
        while at < target {
            let n = (target - at).min(zeros.len() as u64) as usize;
            write_all_at(&self.file, &zeros[..n], at)
                .map_err(|e| io_error(&self.path, "extend the write-ahead log", &e))?;
            at += n as u64;
        }
        self.file.sync_all().map_err(|e| io_error(&self.path, "fsync the write-ahead log", &e))?;
        self.allocated = target;
        Ok(())
    }

    /// After a checkpoint made generation `generation - 1` durable in the database: the
    /// records in the file are stale; the next one goes to offset 0.
    pub fn reset(&mut self, generation: u64) {
        self.generation = generation;
        self.offset = 0;
        self.records = 0;
    }

    /// Closes and deletes the log (everything in it is stale).
    pub fn remove(self) -> Result<(), StoreError> {
        let path = self.path.clone();
        drop(self.file);
        remove(&path)
    }
}

/// Deletes the log at `path` if there is one.
pub fn remove(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(path, "remove the write-ahead log", &e)),
    }
}

#[cfg(unix)]
fn write_all_at(file: &File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, bytes, offset)
}

#[cfg(windows)]
fn write_all_at(file: &File, mut bytes: &[u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !bytes.is_empty() {
        match file.seek_write(bytes, offset) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                bytes = &bytes[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(windows)]
fn sync_parent(_path: &Path) -> Result<(), StoreError> {
    // Windows cannot open a directory as a file to flush it; NTFS journals the creation.
    Ok(())
}

#[cfg(unix)]
fn sync_parent(path: &Path) -> Result<(), StoreError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(path, "fsync the directory of the write-ahead log", &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(store_id: u64, generation: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&crc(store_id, generation, payload).to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn append_payload(id: &str, seq: u64) -> Vec<u8> {
        let mut p = vec![OP_APPEND];
        put_bytes(&mut p, id.as_bytes());
        put_varint(&mut p, seq);
        put_bytes(&mut p, &[1, 0, 0, 1, b'A', 1, b't', 0]);
        p
    }

    #[test]
    fn records_of_another_generation_or_store_are_not_read() {
        let mut bytes = record(7, 3, &append_payload("w", 0));
        bytes.extend(record(7, 3, &append_payload("w", 1)));
        assert_eq!(read_records(&bytes, 7, 3).unwrap().0.len(), 2);
        assert_eq!(read_records(&bytes, 7, 4).unwrap().0.len(), 0);
        assert_eq!(read_records(&bytes, 8, 3).unwrap().0.len(), 0);
    }

    #[test]
    fn reading_stops_at_zeros_truncation_and_bad_crc() {
        let one = record(1, 1, &append_payload("w", 0));
        let two = record(1, 1, &append_payload("w", 1));
        let mut bytes = one.clone();
        bytes.extend(&two);
        // Every truncation of the second record leaves exactly the first.
        for cut in one.len()..bytes.len() {
            let (records, end) = read_records(&bytes[..cut], 1, 1).unwrap();
            assert_eq!((records.len(), end), (1, one.len()), "cut at {cut}");
        }
        // Any flipped bit in the second record drops it (and only it).
        for i in one.len()..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[i] ^= 1 << bit;
                let (records, _) = read_records(&damaged, 1, 1).unwrap();
                assert_eq!(records.len(), 1, "byte {i} bit {bit}");
            }
        }
        let mut zeros = bytes.clone();
        zeros.extend([0u8; 64]);
        assert_eq!(read_records(&zeros, 1, 1).unwrap().0.len(), 2);
    }

    #[test]
    fn valid_crc_with_garbage_payload_is_an_error() {
        let bytes = record(1, 1, &[9, 1, b'w']);
        let err = read_records(&bytes, 1, 1).unwrap_err();
        assert!(err.contains("offset 0") && err.contains("unknown operation 9"), "{err}");
    }

    #[test]
    fn wal_path_appends_the_suffix() {
        assert_eq!(wal_path(Path::new("/d/runs.redb")), PathBuf::from("/d/runs.redb.wal"));
    }
}
