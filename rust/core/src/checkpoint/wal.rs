//! The write-ahead log of a [`RedbStore`](super::RedbStore) opened with
//! [`Durability::Immediate`](super::Durability::Immediate).
//!
//! A redb commit that must reach the disk writes several pages at scattered offsets (leaf,
//! branches, allocator state, header) before its fsync. The log turns each group commit into
//! one sequential write into a file whose blocks are already allocated (zero-filled in
//! chunks, so making it durable rarely has file metadata to write). A batch is durable once
//! its record is; its rows reach redb at the next *checkpoint* (one durable redb commit every
//! few thousand batches, and at close).
//!
//! On Linux the record is written with `O_DIRECT | O_DSYNC`: whole pages, from an aligned
//! buffer, straight to the device, durable when the write returns. That skips the page
//! cache's writeback pass that an `fdatasync` would start, and costs the disk the same one
//! cache flush. Where the file system refuses direct I/O (tmpfs, some FUSE mounts), the
//! record goes through the page cache and is made durable by `fdatasync`.
//!
//! ## Which records belong to the database
//!
//! The redb file keeps, in its `cano_meta` table, a random store id and the log's current
//! *generation*. Every record's CRC covers `store id ‖ generation ‖ length ‖ payload`, so a
//! record only counts if it was written for this database, in the generation the database
//! expects. A checkpoint bumps the generation **in the same durable redb transaction** that
//! persists the log's rows: from then on every record in the file is stale, and the next
//! records overwrite it from offset 0, numbered from 1 again.
//!
//! ## Nothing acknowledged is lost silently
//!
//! - Every record is written **twice**: a copy where the log ends, and a second copy starting
//!   at the next page boundary after it, so the two never share a page. One bit flip, or one
//!   zeroed or unreadable page, leaves a good copy. Records start on a page boundary too, so
//!   a write never touches a page that holds an acknowledged record.
//! - Records are **numbered**. Replay takes record 1, 2, 3... each from whichever copy is
//!   intact. The first number with no intact copy ends the log — a crash tears only the write
//!   that was never acknowledged — *unless* an intact record with a higher number follows:
//!   then a record in the middle was damaged, and the store refuses to open ([`scan`]
//!   reports it) rather than replay around a hole.
//! - The database records, durably, how many bytes the log has been grown to. A log that is
//!   missing, or shorter than that, was deleted or truncated: the store refuses to open.
//! - A damaged log is never retired: the store only opens after an explicit repair, which
//!   replays what is intact, moves the damaged log aside and says what was lost.
//!
//! ## Record layout
//!
//! ```text
//! u32 LE  payload length (> 0)
//! u32 LE  CRC-32 (IEEE) of: store id (u64 LE) ‖ generation (u64 LE) ‖ length (u32 LE) ‖ payload
//! payload: varint record number (1, 2, 3, ... within a generation), then one or more
//!          operations, in the order the batch applied them
//!   u8 1 = append: varint id length, id bytes, varint sequence, varint envelope length,
//!                  envelope bytes (the row's value, see [`codec`](super::codec))
//!   u8 2 = clear:  varint id length, id bytes
//! ```
//!
//! Logs of format 1 (written by earlier builds: one copy, no record numbers) are still
//! replayed, as they were: up to the first record that does not check out.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::error::{path_text, StoreError};

/// The log grows (zero-filled, then fsynced) by this many bytes at a time.
pub const CHUNK_BYTES: u64 = 1 << 20;
/// A checkpoint is due once the log holds this many bytes (a record takes at least two
/// pages)...
pub const CHECKPOINT_BYTES: u64 = 16 << 20;
/// ...or this many records (few in unit tests, so that they cross checkpoints).
pub const CHECKPOINT_BATCHES: u64 = if cfg!(test) { 16 } else { 4096 };
/// The second copy of a record starts on a page of its own.
pub const PAGE: u64 = 4096;
/// The record format this build writes (1: earlier builds).
pub const FORMAT: u64 = 2;

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

fn align_up(offset: u64) -> u64 {
    offset.div_ceil(PAGE) * PAGE
}

/// What a log holds for the current generation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogScan {
    /// Records 1, 2, ... up to the end of the log, each as its operations.
    pub records: Vec<Vec<WalOp>>,
    /// Set when the log has a hole: no intact copy of record `missing`, but intact records
    /// with higher numbers (listed in `after`) follow it. Those are not in `records`.
    pub damage: Option<LogHole>,
}

/// A record lost in the middle of a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogHole {
    /// The first record number with no intact copy.
    pub missing: u64,
    /// The intact records that follow it, by number, with their operations.
    pub after: Vec<(u64, Vec<WalOp>)>,
}

/// The record starting at `at`, if it is intact: its number, operations and length.
fn record_at(
    bytes: &[u8],
    at: usize,
    store_id: u64,
    generation: u64,
) -> Result<Option<(u64, Vec<WalOp>, usize)>, String> {
    if at >= bytes.len() || bytes.len() - at < HEADER {
        return Ok(None);
    }
    let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
    let sum = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
    if len == 0 || len > bytes.len() - at - HEADER {
        return Ok(None);
    }
    let payload = &bytes[at + HEADER..at + HEADER + len];
    if crc(store_id, generation, payload) != sum {
        return Ok(None);
    }
    let mut r = Cursor { bytes: payload, at: 0 };
    let number = r.varint().map_err(|e| format!("record at offset {at} {e}"))?;
    let ops = parse_ops(&payload[r.at..])
        .map_err(|reason| format!("record at offset {at} has a valid CRC but {reason}"))?;
    Ok(Some((number, ops, HEADER + len)))
}

/// Reads the records of `generation` (format 2, see the module docs).
pub fn scan(bytes: &[u8], store_id: u64, generation: u64) -> Result<LogScan, String> {
    let mut records = Vec::new();
    let mut at = 0usize;
    let mut expect = 1u64;
    loop {
        // The record: where the previous one ended (earlier builds), on the page boundary
        // after it (this build), or failing both, its other copy on a later page boundary.
        let mut found = None;
        let aligned = align_up(at as u64) as usize;
        for start in [Some(at), (aligned != at).then_some(aligned)].into_iter().flatten() {
            if let Some((number, ops, len)) = record_at(bytes, start, store_id, generation)? {
                if number == expect {
                    found = Some((ops, start + len));
                    break;
                }
            }
        }
        if found.is_none() {
            let mut page = align_up(at as u64 + HEADER as u64 + 1) as usize;
            while page < bytes.len() {
                if let Some((number, ops, len)) = record_at(bytes, page, store_id, generation)? {
                    if number == expect {
                        found = Some((ops, page + len));
                        break;
                    }
                }
                page += PAGE as usize;
            }
        }
        let Some((ops, end)) = found else { break };
        records.push(ops);
        at = end;
        // Past the record's second copy, when what was read was the first.
        let second = align_up(at as u64) as usize;
        if let Some((number, _, len)) = record_at(bytes, second, store_id, generation)? {
            if number == expect {
                at = second + len;
            }
        }
        expect += 1;
    }
    // Nothing intact may follow the end: every record has a copy on a page boundary.
    let mut after: Vec<(u64, Vec<WalOp>)> = Vec::new();
    let mut page = align_up(at as u64) as usize;
    while page < bytes.len() {
        if let Some((number, ops, _)) = record_at(bytes, page, store_id, generation)? {
            if number > expect && !after.iter().any(|(n, _)| *n == number) {
                after.push((number, ops));
            }
        }
        page += PAGE as usize;
    }
    after.sort_by_key(|(n, _)| *n);
    let damage = (!after.is_empty()).then_some(LogHole { missing: expect, after });
    Ok(LogScan { records, damage })
}

/// Format 1 (earlier builds): one copy per record, no numbers; the valid prefix.
pub fn scan_format1(bytes: &[u8], store_id: u64, generation: u64) -> Result<LogScan, String> {
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
        let ops = parse_ops(payload)
            .map_err(|reason| format!("record at offset {at} has a valid CRC but {reason}"))?;
        records.push(ops);
        at += HEADER + len;
    }
    Ok(LogScan { records, damage: None })
}

fn parse_ops(payload: &[u8]) -> Result<Vec<WalOp>, String> {
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
    if ops.is_empty() {
        return Err("holds no operation".into());
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

/// Reads the whole log at `path`; `None` if there is none.
pub fn read_file(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(path, "read the write-ahead log", &e)),
    }
}

fn io_error(path: &Path, what: &str, e: &std::io::Error) -> StoreError {
    StoreError::from_io(path, what, e)
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
    /// The number of the next record (from 1 in each generation).
    next_number: u64,
    /// Operations staged in `buf`.
    ops: usize,
    /// The record being built: header placeholder, record number, then operations.
    buf: Vec<u8>,
    /// Where a record's image (both copies, whole pages) is laid out before its write: a page
    /// more than the image, which starts at the first page-aligned address inside.
    image: Vec<u8>,
    /// The log opened a second time, with `O_DIRECT | O_DSYNC`: `None` where the file system
    /// refuses direct I/O, and then records go through `file` and `fdatasync`.
    direct: Option<File>,
}

impl Wal {
    /// Opens (creating it if needed) the log at `path` for writing records of `generation`
    /// from offset 0, and locks it (so that no other store uses it as its database). Whatever
    /// the file holds must already be stale (replayed, and the generation bumped durably), or
    /// empty of this generation's records.
    /// `allocated` is what the database recorded of the log's size: space beyond it is grown
    /// (and recorded) again before use.
    pub fn open(
        path: PathBuf,
        store_id: u64,
        generation: u64,
        allocated: u64,
    ) -> Result<Wal, StoreError> {
        Wal::open_with(path, store_id, generation, allocated, true)
    }

    /// [`open`](Self::open), choosing whether to try direct I/O (tests write both ways).
    pub(crate) fn open_with(
        path: PathBuf,
        store_id: u64,
        generation: u64,
        allocated: u64,
        direct: bool,
    ) -> Result<Wal, StoreError> {
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_error(&path, "open the write-ahead log", &e))?;
        lock(&file, &path)?;
        if !existed {
            // The records will be acknowledged as durable: the file's name must be too.
            sync_parent(&path)?;
        }
        let len =
            file.metadata().map_err(|e| io_error(&path, "stat the write-ahead log", &e))?.len();
        let mut magic = [0u8; 4];
        if len >= 4 && read_exact_at(&file, &mut magic, 0).is_ok() && &magic == b"redb" {
            // Somebody's database sits where this store keeps its log: never overwrite it.
            return Err(StoreError::NotAStore {
                path: path_text(&path),
                reason: "this is a redb database, not the write-ahead log of the store next \
                         to it; move one of them"
                    .into(),
            });
        }
        let allocated = allocated.min(len);
        let direct = if direct { open_direct(&path) } else { None };
        Ok(Wal {
            file,
            path,
            store_id,
            generation,
            offset: 0,
            allocated,
            records: 0,
            next_number: 1,
            ops: 0,
            buf: Vec::with_capacity(4096),
            image: Vec::new(),
            direct,
        })
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Bytes of the file allocated for records.
    pub fn allocated(&self) -> u64 {
        self.allocated
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
        put_varint(&mut self.buf, self.next_number);
        self.ops = 0;
    }

    /// True if the staged record holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops == 0
    }

    pub fn push_append(&mut self, workflow_id: &str, sequence: u64, envelope: &[u8]) {
        encode_append(&mut self.buf, workflow_id, sequence, envelope);
        self.ops += 1;
    }

    /// Stages `count` operations encoded elsewhere (see [`encode_append`]).
    pub fn push_ops(&mut self, ops: &[u8], count: usize) {
        self.buf.extend_from_slice(ops);
        self.ops += count;
    }

    /// How many bytes of operations the next record may hold without growing the log: the
    /// next record goes after the staged one when `staged` (it is about to be written),
    /// otherwise where the staged one would have gone.
    pub fn room_after(&self, staged: bool) -> u64 {
        let start =
            if staged { self.end_of((self.buf.len() - HEADER) as u64) } else { self.offset };
        // A record of `p` bytes of operations ends at most `2 * (HEADER + 10 + p) + 2 * PAGE`
        // after its start (two copies, each rounded up to a page).
        (self.allocated.saturating_sub(start + 2 * PAGE) / 2).saturating_sub(HEADER as u64 + 10)
    }

    pub fn push_clear(&mut self, workflow_id: &str) {
        self.buf.push(OP_CLEAR);
        put_bytes(&mut self.buf, workflow_id.as_bytes());
        self.ops += 1;
    }

    /// Where a record of `payload` bytes (operations only) would end, both copies written.
    fn end_of(&self, payload: u64) -> u64 {
        let len = HEADER as u64 + 10 + payload;
        align_up(align_up(self.offset + len) + len)
    }

    /// True while records are written with `O_DIRECT | O_DSYNC` (durable when written).
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Makes sure a record of up to `payload` bytes of operations fits in the allocated file,
    /// growing it if needed; returns the new allocated size when it grew (the database must
    /// record it durably before the record is acknowledged).
    pub fn reserve(&mut self, payload: u64) -> Result<Option<u64>, StoreError> {
        let end = self.end_of(payload);
        if end > self.allocated {
            self.grow(end)?;
            return Ok(Some(self.allocated));
        }
        Ok(None)
    }

    /// Writes the staged record, twice, after the last one: one write of whole pages. Durable
    /// once [`sync`](Self::sync) returns (with direct I/O, already when this returns). On
    /// failure nothing counts as written: the next record goes to the same offset, with the
    /// same number.
    pub fn write(&mut self) -> Result<(), StoreError> {
        let payload_len = self.buf.len() - HEADER;
        let len = u32::try_from(payload_len).map_err(|_| StoreError::Io {
            path: path_text(&self.path),
            message: format!("a batch of {payload_len} bytes is too large for one log record"),
        })?;
        let sum = crc(self.store_id, self.generation, &self.buf[HEADER..]);
        self.buf[..4].copy_from_slice(&len.to_le_bytes());
        self.buf[4..8].copy_from_slice(&sum.to_le_bytes());
        let record = self.buf.len();
        let first = self.offset;
        let second = align_up(first + record as u64);
        let end = align_up(second + record as u64);
        if end > self.allocated {
            return Err(StoreError::Io {
                path: path_text(&self.path),
                message: "the write-ahead log has no room reserved for this record".into(),
            });
        }
        // The image: the first copy, zeros up to the page boundary, the second copy, zeros up
        // to the next one. Laid out from a page-aligned address, as direct I/O needs.
        let size = (end - first) as usize;
        self.image.clear();
        self.image.resize(size + PAGE as usize, 0);
        let at = self.image.as_ptr().align_offset(PAGE as usize);
        let copy = (second - first) as usize;
        self.image[at..at + record].copy_from_slice(&self.buf);
        self.image[at + copy..at + copy + record].copy_from_slice(&self.buf);
        self.write_image(at, size, first)?;
        self.offset = end;
        self.records += 1;
        self.next_number += 1;
        Ok(())
    }

    fn write_image(&mut self, at: usize, size: usize, offset: u64) -> Result<(), StoreError> {
        let image = &self.image[at..at + size];
        if let Some(direct) = &self.direct {
            match write_all_at(direct, image, offset) {
                Ok(()) => return Ok(()),
                // Accepted at open but not for this write (an alignment this file system
                // wants bigger than a page, say): from now on, the page cache and fdatasync.
                Err(e) if e.kind() == ErrorKind::InvalidInput => self.direct = None,
                Err(e) => return Err(io_error(&self.path, "write the write-ahead log", &e)),
            }
        }
        write_all_at(&self.file, image, offset)
            .map_err(|e| io_error(&self.path, "write the write-ahead log", &e))
    }

    /// Every record written so far is durable once this returns: `fdatasync`, or nothing to
    /// do when records are written with `O_DIRECT | O_DSYNC`.
    pub fn sync(&self) -> Result<(), StoreError> {
        if self.direct.is_some() {
            return Ok(());
        }
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
    /// records in the file are stale; the next one goes to offset 0, numbered 1.
    pub fn reset(&mut self, generation: u64) {
        self.generation = generation;
        self.offset = 0;
        self.records = 0;
        self.next_number = 1;
    }

    /// Closes and deletes the log (everything in it is stale).
    pub fn remove(self) -> Result<(), StoreError> {
        let path = self.path.clone();
        drop(self.file);
        remove(&path)
    }
}

/// The log opened for direct, synchronous writes, if the file system takes them.
#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().write(true).custom_flags(libc::O_DIRECT | libc::O_DSYNC).open(path).ok()
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_path: &Path) -> Option<File> {
    None
}

/// Takes an exclusive advisory lock on the log, so that no other store — in this process or
/// another — opens it as its own database file while it is a log.
fn lock(file: &File, path: &Path) -> Result<(), StoreError> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::InUse { path: path_text(path) }),
        Err(std::fs::TryLockError::Error(e)) => Err(io_error(path, "lock the write-ahead log", &e)),
    }
}

/// Encodes an append as a record holds it.
pub fn encode_append(buf: &mut Vec<u8>, workflow_id: &str, sequence: u64, envelope: &[u8]) {
    buf.push(OP_APPEND);
    put_bytes(buf, workflow_id.as_bytes());
    put_varint(buf, sequence);
    put_bytes(buf, envelope);
}

/// At most the bytes [`encode_append`] adds for a row of `id_len` and `envelope_len` bytes.
pub fn append_bound(id_len: usize, envelope_len: usize) -> u64 {
    (1 + 10 + id_len + 10 + 10 + envelope_len) as u64
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
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    let n = file.seek_read(buf, offset)?;
    if n == buf.len() {
        Ok(())
    } else {
        Err(std::io::ErrorKind::UnexpectedEof.into())
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

    /// A log image: records numbered from 1, two copies each; each record on a page boundary
    /// (`aligned`, as this build writes them) or right after the previous one (earlier builds).
    fn log_of(payloads: &[Vec<u8>], store_id: u64, generation: u64, aligned: bool) -> Vec<u8> {
        let mut bytes = vec![0u8; 1 << 16];
        let mut at = 0u64;
        for (i, ops) in payloads.iter().enumerate() {
            let mut payload = Vec::new();
            put_varint(&mut payload, i as u64 + 1);
            payload.extend_from_slice(ops);
            let mut rec = (payload.len() as u32).to_le_bytes().to_vec();
            rec.extend_from_slice(&crc(store_id, generation, &payload).to_le_bytes());
            rec.extend_from_slice(&payload);
            let second = align_up(at + rec.len() as u64);
            bytes[at as usize..at as usize + rec.len()].copy_from_slice(&rec);
            bytes[second as usize..second as usize + rec.len()].copy_from_slice(&rec);
            at = second + rec.len() as u64;
            if aligned {
                at = align_up(at);
            }
        }
        bytes.truncate(align_up(at) as usize);
        bytes
    }

    fn append_ops(id: &str, seq: u64) -> Vec<u8> {
        let mut p = vec![OP_APPEND];
        put_bytes(&mut p, id.as_bytes());
        put_varint(&mut p, seq);
        put_bytes(&mut p, &[1, 0, 0, 1, b'A', 1, b't', 0]);
        p
    }

    fn seqs(scan: &LogScan) -> Vec<u64> {
        scan.records
            .iter()
            .flatten()
            .map(|op| match op {
                WalOp::Append { sequence, .. } => *sequence,
                WalOp::Clear { .. } => u64::MAX,
            })
            .collect()
    }

    /// Six records, as this build lays them out and as earlier builds did.
    fn six_both() -> [Vec<u8>; 2] {
        let ops = (0..6).map(|s| append_ops("w", s)).collect::<Vec<_>>();
        [log_of(&ops, 7, 3, true), log_of(&ops, 7, 3, false)]
    }

    #[test]
    fn records_of_another_generation_or_store_are_not_read() {
        for bytes in six_both() {
            assert_eq!(seqs(&scan(&bytes, 7, 3).unwrap()), [0, 1, 2, 3, 4, 5]);
            assert!(scan(&bytes, 7, 4).unwrap().records.is_empty());
            assert!(scan(&bytes, 8, 3).unwrap().records.is_empty());
            assert_eq!(scan(&bytes, 7, 4).unwrap().damage, None);
        }
    }

    #[test]
    fn any_single_bit_flip_anywhere_loses_nothing() {
        for bytes in six_both() {
            for bit in 0..bytes.len() * 8 {
                let mut damaged = bytes.clone();
                damaged[bit / 8] ^= 1 << (bit % 8);
                let s = scan(&damaged, 7, 3).unwrap();
                assert_eq!(seqs(&s), [0, 1, 2, 3, 4, 5], "bit {bit}");
                assert_eq!(s.damage, None, "bit {bit}");
            }
        }
    }

    #[test]
    fn any_zeroed_page_loses_nothing() {
        for bytes in six_both() {
            for page in (0..bytes.len()).step_by(PAGE as usize) {
                let mut damaged = bytes.clone();
                let end = (page + PAGE as usize).min(damaged.len());
                damaged[page..end].fill(0);
                assert_eq!(seqs(&scan(&damaged, 7, 3).unwrap()), [0, 1, 2, 3, 4, 5], "page {page}");
            }
        }
    }

    #[test]
    fn a_record_with_both_copies_damaged_is_a_hole_when_others_follow() {
        for (bytes, aligned) in six_both().into_iter().zip([true, false]) {
            // Find both copies of record 3 and damage both.
            let mut damaged = bytes.clone();
            let mut at = 0usize;
            for n in 1..=3u64 {
                let (number, _, len) = record_at(&bytes, at, 7, 3).unwrap().unwrap();
                assert_eq!(number, n);
                let second = align_up((at + len) as u64) as usize;
                if n == 3 {
                    damaged[at + 9] ^= 0xff;
                    damaged[second + 9] ^= 0xff;
                }
                at = second + len;
                if aligned {
                    at = align_up(at as u64) as usize;
                }
            }
            let s = scan(&damaged, 7, 3).unwrap();
            assert_eq!(seqs(&s), [0, 1]);
            let hole = s.damage.expect("a hole");
            assert_eq!(hole.missing, 3);
            assert_eq!(hole.after.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [4, 5, 6]);
        }
    }

    #[test]
    fn a_torn_tail_ends_the_log_without_a_hole() {
        for bytes in six_both() {
            let full = seqs(&scan(&bytes, 7, 3).unwrap());
            for cut in 0..bytes.len() {
                let s = scan(&bytes[..cut], 7, 3).unwrap();
                let got = seqs(&s);
                assert_eq!(got[..], full[..got.len()], "cut at {cut}");
                assert_eq!(s.damage, None, "cut at {cut}");
            }
        }
    }

    #[test]
    fn a_valid_crc_over_a_garbage_payload_is_an_error() {
        let mut payload = vec![1u8];
        payload.extend([9, 1, b'w']);
        let mut rec = (payload.len() as u32).to_le_bytes().to_vec();
        rec.extend_from_slice(&crc(1, 1, &payload).to_le_bytes());
        rec.extend_from_slice(&payload);
        let err = scan(&rec, 1, 1).unwrap_err();
        assert!(err.contains("offset 0") && err.contains("unknown operation 9"), "{err}");
    }

    #[test]
    fn format1_logs_are_read_up_to_the_first_bad_record() {
        let rec = |seq| {
            let payload = append_ops("w", seq);
            let mut r = (payload.len() as u32).to_le_bytes().to_vec();
            r.extend_from_slice(&crc(1, 1, &payload).to_le_bytes());
            r.extend_from_slice(&payload);
            r
        };
        let mut bytes = rec(0);
        bytes.extend(rec(1));
        assert_eq!(seqs(&scan_format1(&bytes, 1, 1).unwrap()), [0, 1]);
    }

    #[test]
    fn the_writer_and_the_reader_agree() {
        // Through direct I/O (where the file system takes it) and through the page cache.
        for direct in [true, false] {
            let dir =
                std::env::temp_dir().join(format!("cano-wal-{}-{direct}", std::process::id()));
            let _ = std::fs::create_dir_all(&dir);
            let path = dir.join("log.wal");
            let _ = std::fs::remove_file(&path);
            let mut wal = Wal::open_with(path.clone(), 5, 9, 0, direct).unwrap();
            if !direct {
                assert!(!wal.is_direct());
            }
            let mut ends = Vec::new();
            for seq in 0..40u64 {
                wal.reserve(200 + seq * 150).unwrap();
                wal.begin();
                // Records of 1 to 7 pages, so that copies cross page boundaries.
                wal.push_append("run", seq, &vec![7; 30 + seq as usize * 150]);
                if seq % 7 == 0 {
                    wal.push_clear("other");
                }
                wal.write().unwrap();
                ends.push(wal.offset);
            }
            wal.sync().unwrap();
            // Every record starts on a page boundary: no write touches an earlier record.
            assert!(ends.iter().all(|end| end % PAGE == 0), "{ends:?}");
            let bytes = read_file(&path).unwrap().unwrap();
            let s = scan(&bytes, 5, 9).unwrap();
            assert_eq!(s.records.len(), 40);
            assert_eq!(s.damage, None);
            for (seq, ops) in s.records.iter().enumerate() {
                assert_eq!(
                    ops[0],
                    WalOp::Append {
                        workflow_id: "run".into(),
                        sequence: seq as u64,
                        envelope: vec![7; 30 + seq * 150],
                    }
                );
            }
            // A second store cannot open this log as its own file while it is held.
            assert!(matches!(Wal::open(path.clone(), 5, 9, 0), Err(StoreError::InUse { .. })));
            wal.remove().unwrap();
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn records_are_written_directly_where_the_file_system_allows_it() {
        // `cargo test` runs on a disk (not tmpfs) here and in CI: direct I/O is taken, and a
        // record is durable without an fdatasync. Elsewhere the fallback is what is tested.
        let dir = std::env::temp_dir().join(format!("cano-wal-direct-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("log.wal");
        let _ = std::fs::remove_file(&path);
        let wal = Wal::open(path.clone(), 1, 1, 0).unwrap();
        let on_tmpfs =
            std::fs::read_to_string("/proc/mounts").unwrap_or_default().lines().any(|l| {
                let mut f = l.split_whitespace();
                let (mount, kind) = (f.nth(1).unwrap_or(""), f.next().unwrap_or(""));
                kind == "tmpfs" && dir.starts_with(mount) && mount != "/"
            });
        if !on_tmpfs {
            assert!(wal.is_direct());
        }
        wal.remove().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn logs_of_earlier_builds_with_records_back_to_back_are_read() {
        let [_, earlier] = six_both();
        assert_eq!(seqs(&scan(&earlier, 7, 3).unwrap()), [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn wal_path_appends_the_suffix() {
        assert_eq!(wal_path(Path::new("/d/runs.redb")), PathBuf::from("/d/runs.redb.wal"));
    }
}
