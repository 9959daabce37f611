//! The stored value of a row: a small versioned binary envelope.
//!
//! The key `(workflow_id, sequence)` carries the rest of the row. Layout of version 3:
//!
//! ```text
//! u8      envelope version (3)
//! u8      row kind (0 state entry, 1 compensation, 2 step cursor)
//! varint  workflow version
//! varint  length of the state label, then its UTF-8 bytes
//! varint  length of the task id, then its UTF-8 bytes
//! u8      0 = no output, 1 = output follows
//! varint  length of the output, then its bytes (only when the flag is 1)
//! u64 LE  when the row was written: microseconds since the UNIX epoch (0: unknown)
//! u32 LE  CRC-32 of: varint length of the workflow id ‖ its bytes ‖ sequence (u64 LE) ‖
//!         every byte of the envelope before this field
//! ```
//!
//! Varints are unsigned LEB128. Nothing may follow the checksum. The checksum covers the key
//! too: a damaged byte anywhere — in the value, or in the key that says which run and which
//! sequence a row belongs to — is a decode error, never a different row (redb itself does
//! not checksum values). Versions 2 (no time) and 1 (no time, no checksum), written by earlier
//! builds, are still read, with an unknown time. A reader refuses an envelope version it does
//! not know.

use super::error::StoreError;
use super::row::{Row, RowKind};

/// The envelope version this build writes.
pub const ENVELOPE_VERSION: u8 = 3;
/// The version without a time, written by earlier builds (still read).
const UNTIMED_VERSION: u8 = 2;
/// The version without a checksum, written by earlier builds (still read).
const LEGACY_VERSION: u8 = 1;

/// Now, in microseconds since the UNIX epoch: the time [`encode`] stamps a row with.
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn checksum(workflow_id: &str, sequence: u64, body: &[u8]) -> u32 {
    let mut len = [0u8; 10];
    let mut n = 0;
    let mut value = workflow_id.len() as u64;
    while value >= 0x80 {
        len[n] = (value as u8) | 0x80;
        value >>= 7;
        n += 1;
    }
    len[n] = value as u8;
    let mut h = crc32fast::Hasher::new();
    h.update(&len[..=n]);
    h.update(workflow_id.as_bytes());
    h.update(&sequence.to_le_bytes());
    h.update(body);
    h.finalize()
}

/// Encodes everything of `row` except its key (which its checksum covers), stamped with the
/// time now.
pub fn encode(row: &Row) -> Vec<u8> {
    let output_len = row.output.as_ref().map_or(0, Vec::len);
    let mut out = Vec::with_capacity(2 + 5 + row.state.len() + row.task_id.len() + output_len + 21);
    encode_into(row, &mut out);
    out
}

/// [`encode`] into `out` (cleared first), reusing its allocation.
pub fn encode_into(row: &Row, out: &mut Vec<u8>) {
    out.clear();
    encode_row(&row.workflow_id, row, now_micros(), out);
}

/// Appends the envelope of `row`, keyed `(key, row.sequence)` and stamped `at_micros`.
fn encode_row(key: &str, row: &Row, at_micros: u64, out: &mut Vec<u8>) {
    encode_fields(
        key,
        row.sequence,
        row.kind,
        row.workflow_version,
        &row.state,
        &row.task_id,
        row.output.as_deref(),
        at_micros,
        out,
    );
}

/// Appends the envelope of a row with these fields to `out`: what [`encode`] does, for a
/// caller that has the fields but not a [`Row`]. `at_micros` is when the row was written
/// (see [`now_micros`]).
#[allow(clippy::too_many_arguments)]
pub fn encode_fields(
    workflow_id: &str,
    sequence: u64,
    kind: RowKind,
    workflow_version: u32,
    state: &str,
    task_id: &str,
    output: Option<&[u8]>,
    at_micros: u64,
    out: &mut Vec<u8>,
) {
    out.reserve(24 + state.len() + task_id.len() + output.map_or(0, <[u8]>::len));
    let start = out.len();
    out.push(ENVELOPE_VERSION);
    out.push(kind as u8);
    put_varint(out, u64::from(workflow_version));
    put_bytes(out, state.as_bytes());
    put_bytes(out, task_id.as_bytes());
    match output {
        None => out.push(0),
        Some(bytes) => {
            out.push(1);
            put_bytes(out, bytes);
        }
    }
    out.extend_from_slice(&at_micros.to_le_bytes());
    let sum = checksum(workflow_id, sequence, &out[start..]);
    out.extend_from_slice(&sum.to_le_bytes());
}

/// Decodes the value stored under `(workflow_id, sequence)`.
pub fn decode(workflow_id: &str, sequence: u64, value: &[u8]) -> Result<Row, StoreError> {
    decode_timed(workflow_id, sequence, value).map(|(row, _)| row)
}

/// [`decode`], with when the row was written (microseconds since the UNIX epoch; 0 for rows
/// of earlier builds, which did not record it).
pub fn decode_timed(
    workflow_id: &str,
    sequence: u64,
    value: &[u8],
) -> Result<(Row, u64), StoreError> {
    decode_fields(workflow_id, sequence, value).map_err(|reason| StoreError::Decode {
        workflow_id: workflow_id.to_owned(),
        sequence,
        reason,
    })
}

/// Decodes only the state label (for run summaries).
pub fn decode_state(workflow_id: &str, sequence: u64, value: &[u8]) -> Result<String, StoreError> {
    decode(workflow_id, sequence, value).map(|row| row.state)
}

fn decode_fields(workflow_id: &str, sequence: u64, value: &[u8]) -> Result<(Row, u64), String> {
    let version = *value.first().ok_or("truncated before the envelope version")?;
    let mut at = 0;
    let body = match version {
        ENVELOPE_VERSION | UNTIMED_VERSION => {
            let Some(split) = value.len().checked_sub(4) else {
                return Err("truncated before the checksum".into());
            };
            let (body, sum) = value.split_at(split);
            let stored = u32::from_le_bytes(sum.try_into().expect("4 bytes"));
            if checksum(workflow_id, sequence, body) != stored {
                return Err("checksum mismatch: the row or its key was damaged".into());
            }
            if version == ENVELOPE_VERSION {
                let Some(split) = body.len().checked_sub(8) else {
                    return Err("truncated before the time".into());
                };
                let (fields, time) = body.split_at(split);
                at = u64::from_le_bytes(time.try_into().expect("8 bytes"));
                fields
            } else {
                body
            }
        }
        LEGACY_VERSION => value,
        _ => {
            return Err(format!(
                "unknown envelope version {version} (this cano reads versions 1 to \
                 {ENVELOPE_VERSION}; damaged, or written by a newer cano?)"
            ))
        }
    };
    let value = body;
    let mut r = Reader { bytes: value, at: 1 };
    let kind_byte = r.byte("row kind")?;
    let kind =
        RowKind::from_u8(kind_byte).ok_or_else(|| format!("unknown row kind {kind_byte}"))?;
    let workflow_version = u32::try_from(r.varint("workflow version")?)
        .map_err(|_| "workflow version does not fit in 32 bits".to_owned())?;
    let state = r.text("state label")?;
    let task_id = r.text("task id")?;
    let output = match r.byte("output flag")? {
        0 => None,
        1 => Some(r.bytes("output")?.to_vec()),
        other => return Err(format!("invalid output flag {other}")),
    };
    if r.at != value.len() {
        return Err(format!("{} unexpected trailing bytes", value.len() - r.at));
    }
    let row = Row {
        workflow_id: workflow_id.to_owned(),
        sequence,
        state,
        task_id,
        kind,
        output,
        workflow_version,
    };
    Ok((row, at))
}

/// The sequence under which a run's step history is stored, packed into one value (see
/// `pack_rows`): one key per run, not per row, so that a history costs its store one
/// B-tree insert however long the run was.
pub const PACKED: u64 = u64::MAX;

/// `rows` as one output value: for each, `varint sequence ‖ varint length ‖ envelope`, the
/// envelope keyed `(key, sequence)` and stamped with the row's own time. Stored as the
/// output of a row at `(key, PACKED)`, whose envelope checksums the whole.
#[cfg(test)]
pub fn pack_rows(key: &str, rows: &[(Row, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * 48);
    let mut envelope = Vec::new();
    for (row, at) in rows {
        envelope.clear();
        encode_row(key, row, *at, &mut envelope);
        put_varint(&mut out, row.sequence);
        put_bytes(&mut out, &envelope);
    }
    out
}

/// [`pack_row`] for an envelope this store made itself (held in memory since, or read from
/// its log, whose records are checked): keyed again without checking it first.
pub fn pack_own_row(
    out: &mut Vec<u8>,
    key: &str,
    workflow_id: &str,
    sequence: u64,
    envelope: &[u8],
) -> Result<(), StoreError> {
    pack(out, key, workflow_id, sequence, envelope, false)
}

/// Appends the row stored as `value` under `(workflow_id, sequence)` to `out`, packed under
/// `key` as `pack_rows` packs it: the envelope is checked, and keyed `(key, sequence)`
/// with a new checksum over the same bytes (envelopes of earlier versions are decoded and
/// written again). A damaged envelope is an error, never packed.
pub fn pack_row(
    out: &mut Vec<u8>,
    key: &str,
    workflow_id: &str,
    sequence: u64,
    value: &[u8],
) -> Result<(), StoreError> {
    pack(out, key, workflow_id, sequence, value, true)
}

/// [`pack_row`], checking the envelope's checksum only when `check`.
fn pack(
    out: &mut Vec<u8>,
    key: &str,
    workflow_id: &str,
    sequence: u64,
    value: &[u8],
    check: bool,
) -> Result<(), StoreError> {
    put_varint(out, sequence);
    if value.first() == Some(&ENVELOPE_VERSION) && value.len() > 4 {
        let (body, sum) = value.split_at(value.len() - 4);
        let stored = || u32::from_le_bytes(sum.try_into().expect("4"));
        if !check || checksum(workflow_id, sequence, body) == stored() {
            put_varint(out, value.len() as u64);
            out.extend_from_slice(body);
            out.extend_from_slice(&checksum(key, sequence, body).to_le_bytes());
            return Ok(());
        }
    }
    // An earlier version, or damaged: decoding says which.
    let (row, at) = decode_timed(workflow_id, sequence, value)?;
    let mut envelope = Vec::with_capacity(value.len() + 12);
    encode_row(key, &row, at, &mut envelope);
    put_bytes(out, &envelope);
    Ok(())
}

/// The rows `pack_rows` packed under `key`, with their times, in order.
pub fn unpack_rows(key: &str, packed: &[u8]) -> Result<Vec<(Row, u64)>, StoreError> {
    let damaged = |reason: String| StoreError::Decode {
        workflow_id: key.to_owned(),
        sequence: PACKED,
        reason: format!("packed history: {reason}"),
    };
    let mut r = Reader { bytes: packed, at: 0 };
    let mut rows = Vec::new();
    while r.at < packed.len() {
        let sequence = r.varint("sequence").map_err(damaged)?;
        let envelope = r.bytes("envelope").map_err(damaged)?;
        rows.push(decode_timed(key, sequence, envelope)?);
    }
    Ok(rows)
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

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self, what: &str) -> Result<u8, String> {
        let b = *self.bytes.get(self.at).ok_or_else(|| format!("truncated before the {what}"))?;
        self.at += 1;
        Ok(b)
    }

    fn varint(&mut self, what: &str) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte(what)?;
            let low = u64::from(b & 0x7f);
            if shift == 63 && low > 1 {
                break;
            }
            value |= low << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(format!("the {what} is not a valid varint"))
    }

    fn bytes(&mut self, what: &str) -> Result<&'a [u8], String> {
        let len = self.varint(what)?;
        let remaining = self.bytes.len() - self.at;
        let len = usize::try_from(len)
            .ok()
            .filter(|&n| n <= remaining)
            .ok_or_else(|| format!("the {what} claims {len} bytes but only {remaining} remain"))?;
        let slice = &self.bytes[self.at..self.at + len];
        self.at += len;
        Ok(slice)
    }

    fn text(&mut self, what: &str) -> Result<String, String> {
        let bytes = self.bytes(what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("the {what} is not valid UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: RowKind, output: Option<Vec<u8>>) -> Row {
        Row {
            workflow_id: "order-1".into(),
            sequence: 7,
            state: "Charge".into(),
            task_id: "ChargeCard".into(),
            kind,
            output,
            workflow_version: 3,
        }
    }

    #[test]
    fn packed_rows_round_trip_with_their_times() {
        let rows: Vec<(Row, u64)> = (0..5u64)
            .map(|i| {
                let mut r = row(RowKind::StateEntry, (i % 2 == 1).then(|| vec![i as u8; 3]));
                r.workflow_id = "\0horder-1".into();
                r.sequence = i * 3;
                (r, 1_000 + i)
            })
            .collect();
        let packed = pack_rows("\0horder-1", &rows);
        assert_eq!(unpack_rows("\0horder-1", &packed).unwrap(), rows);
        assert_eq!(unpack_rows("\0horder-1", &[]).unwrap(), vec![]);
        // A damaged byte, a cut, or another run's key is an error, never other rows.
        let mut bad = packed.clone();
        bad[4] ^= 1;
        assert!(unpack_rows("\0horder-1", &bad).is_err());
        assert!(unpack_rows("\0horder-1", &packed[..packed.len() - 1]).is_err());
        assert!(unpack_rows("\0horder-2", &packed).is_err());
    }

    #[test]
    fn a_row_packed_from_its_stored_value_is_the_row_packed_from_its_fields() {
        let rows: Vec<(Row, u64)> = (0..4u64)
            .map(|i| {
                let mut r = row(RowKind::StepCursor, (i % 2 == 0).then(|| vec![i as u8; 5]));
                r.sequence = i;
                (r, 7_000 + i)
            })
            .collect();
        let (mut packed, mut own) = (Vec::new(), Vec::new());
        for (r, at) in &rows {
            let mut stored = Vec::new();
            encode_row("order-1", r, *at, &mut stored);
            pack_row(&mut packed, "\0horder-1", "order-1", r.sequence, &stored).unwrap();
            pack_own_row(&mut own, "\0horder-1", "order-1", r.sequence, &stored).unwrap();
        }
        assert_eq!(own, packed);
        let rekeyed: Vec<(Row, u64)> = rows
            .iter()
            .map(|(r, at)| (Row { workflow_id: "\0horder-1".into(), ..r.clone() }, *at))
            .collect();
        assert_eq!(packed, pack_rows("\0horder-1", &rekeyed));
        assert_eq!(unpack_rows("\0horder-1", &packed).unwrap(), rekeyed);

        // A damaged stored value is an error naming the row, never packed.
        let mut stored = Vec::new();
        encode_row("order-1", &rows[1].0, 1, &mut stored);
        stored[3] ^= 1;
        let err = pack_row(&mut Vec::new(), "\0horder-1", "order-1", 1, &stored).unwrap_err();
        assert!(matches!(err, StoreError::Decode { sequence: 1, .. }), "{err:?}");
    }

    #[test]
    fn round_trips_every_kind() {
        for (kind, output) in [
            (RowKind::StateEntry, None),
            (RowKind::Compensation, Some(b"{\"id\":1}".to_vec())),
            (RowKind::StepCursor, Some(Vec::new())),
        ] {
            let r = row(kind, output);
            assert_eq!(decode("order-1", 7, &encode(&r)).unwrap(), r);
        }
    }

    #[test]
    fn empty_output_differs_from_no_output() {
        let none = encode(&row(RowKind::StepCursor, None));
        let empty = encode(&row(RowKind::StepCursor, Some(Vec::new())));
        assert_ne!(none, empty);
        assert_eq!(decode("order-1", 7, &empty).unwrap().output, Some(Vec::new()));
    }

    #[test]
    fn layout_is_compact_and_stable() {
        let mut v = Vec::new();
        encode_fields("w", 0, RowKind::StateEntry, 0, "A", "t", None, 1_234_567, &mut v);
        assert_eq!(v[..8], [3, 0, 0, 1, b'A', 1, b't', 0]);
        assert_eq!(v[8..16], 1_234_567u64.to_le_bytes());
        assert_eq!(v.len(), 20);
        assert_eq!(v[16..], checksum("w", 0, &v[..16]).to_le_bytes());
        let (row, at) = decode_timed("w", 0, &v).unwrap();
        assert_eq!((row, at), (Row::state_entry("w", 0, "A", "t"), 1_234_567));
    }

    #[test]
    fn rows_are_stamped_with_the_time_they_were_encoded() {
        let before = now_micros();
        let v = encode(&Row::state_entry("w", 0, "A", "t"));
        let (_, at) = decode_timed("w", 0, &v).unwrap();
        assert!(before <= at && at <= now_micros());
    }

    #[test]
    fn rows_written_by_earlier_builds_are_still_read_without_a_time() {
        let legacy = [1, 0, 0, 1, b'A', 1, b't', 0];
        assert_eq!(decode_timed("w", 0, &legacy).unwrap(), (Row::state_entry("w", 0, "A", "t"), 0));
        let mut untimed = vec![2, 0, 0, 1, b'A', 1, b't', 0];
        let sum = checksum("w", 0, &untimed);
        untimed.extend_from_slice(&sum.to_le_bytes());
        assert_eq!(
            decode_timed("w", 0, &untimed).unwrap(),
            (Row::state_entry("w", 0, "A", "t"), 0)
        );
        // Moved into a step history, they are packed as this build writes them.
        for value in [&legacy[..], &untimed[..]] {
            let mut packed = Vec::new();
            pack_row(&mut packed, "\0hw", "w", 0, value).unwrap();
            assert_eq!(packed, pack_rows("\0hw", &[(Row::state_entry("\0hw", 0, "A", "t"), 0)]));
        }
    }

    #[test]
    fn every_single_bit_flip_in_the_value_or_the_key_is_detected() {
        let r = row(RowKind::Compensation, Some(b"{\"charge\":1250}".to_vec()));
        let value = encode(&r);
        for bit in 0..value.len() * 8 {
            let mut v = value.clone();
            v[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&r.workflow_id, r.sequence, &v).is_err(), "value bit {bit}");
        }
        // The key, as a damaged redb page could present it.
        for bit in 0..64 {
            assert!(decode(&r.workflow_id, r.sequence ^ (1 << bit), &value).is_err(), "seq {bit}");
        }
        let id = r.workflow_id.as_bytes();
        for bit in 0..id.len() * 8 {
            let mut other = id.to_vec();
            other[bit / 8] ^= 1 << (bit % 8);
            if let Ok(other) = String::from_utf8(other) {
                assert!(decode(&other, r.sequence, &value).is_err(), "id bit {bit}");
            }
        }
    }

    #[test]
    fn randomized_round_trips() {
        let mut rng = fastrand::Rng::with_seed(0x00ca_0c0d);
        let alphabet: Vec<char> = "aZ09_-é漢🦀 \u{0}\n".chars().collect();
        for _ in 0..2_000 {
            let text = |rng: &mut fastrand::Rng| -> String {
                let n = rng.usize(0..40);
                (0..n).map(|_| alphabet[rng.usize(0..alphabet.len())]).collect()
            };
            let output = if rng.bool() {
                let n = rng.usize(0..600);
                Some((0..n).map(|_| rng.u8(..)).collect())
            } else {
                None
            };
            let r = Row {
                workflow_id: text(&mut rng),
                sequence: rng.u64(..),
                state: text(&mut rng),
                task_id: text(&mut rng),
                kind: RowKind::from_u8(rng.u8(0..3)).unwrap(),
                output,
                workflow_version: if rng.bool() { rng.u32(..) } else { rng.u32(0..200) },
            };
            let value = encode(&r);
            assert_eq!(decode(&r.workflow_id, r.sequence, &value).unwrap(), r);
        }
    }

    #[test]
    fn randomized_garbage_never_panics() {
        let mut rng = fastrand::Rng::with_seed(42);
        let valid = encode(&row(RowKind::Compensation, Some(vec![9; 300])));
        for _ in 0..5_000 {
            let mut bytes = valid.clone();
            match rng.u8(0..3) {
                0 => bytes.truncate(rng.usize(0..bytes.len())),
                1 => {
                    let i = rng.usize(0..bytes.len());
                    bytes[i] = rng.u8(..);
                }
                _ => bytes = (0..rng.usize(0..64)).map(|_| rng.u8(..)).collect(),
            }
            let _ = decode("w", 1, &bytes);
        }
    }

    #[test]
    fn errors_name_the_workflow_and_sequence() {
        let err = decode("order-9", 12, &[1, 0, 0, 5, b'A']).unwrap_err(); // legacy, truncated
        let text = err.to_string();
        assert!(text.starts_with("decode checkpoint row at workflow_id=\"order-9\" sequence=12:"));
        assert!(text.contains("state label"), "{text}");
    }

    #[test]
    fn refuses_unknown_versions_kinds_and_trailing_bytes() {
        let mut v = encode(&row(RowKind::StateEntry, None));
        v[0] = 4;
        assert!(decode("w", 0, &v).unwrap_err().to_string().contains("envelope version 4"));
        let legacy_bad_kind = [1, 9, 0, 1, b'A', 1, b't', 0];
        assert!(decode("w", 0, &legacy_bad_kind).unwrap_err().to_string().contains("row kind 9"));
        let legacy_trailing = [1, 0, 0, 1, b'A', 1, b't', 0, 0];
        assert!(decode("w", 0, &legacy_trailing).unwrap_err().to_string().contains("trailing"));
        let mut v = encode(&row(RowKind::StateEntry, None));
        v.push(0);
        assert!(decode("w", 0, &v).unwrap_err().to_string().contains("checksum"));
        assert!(decode("w", 0, &[]).unwrap_err().to_string().contains("truncated"));
    }

    #[test]
    fn varints_round_trip_at_the_edges() {
        for value in [0, 1, 127, 128, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            let mut r = Reader { bytes: &out, at: 0 };
            assert_eq!(r.varint("v").unwrap(), value);
            assert_eq!(r.at, out.len());
        }
        let overlong = [0xff; 11];
        assert!(Reader { bytes: &overlong, at: 0 }.varint("v").is_err());
    }
}
