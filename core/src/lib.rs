//! The relay's compiled core (issue #18): the client frame reader of open WebSocket
//! connections; the fan-out's send queues (outbox.rs) and a room's members (members.rs).
//!
//! `FrameReader` turns the bytes a client sends into complete messages: it unmasks and
//! parses frames, joins fragments and checks text as UTF-8, in one call per read, where
//! websockets' Python parser pays a generator step, a `Frame` object and several Python
//! calls per frame (~14% of the relay's user time). It checks what websockets'
//! `ServerProtocol` checks, in the same order, and fails with the same close codes
//! (1002, 1007, 1009); control frames (ping, pong, close) are handed back as they came,
//! for websockets' protocol object to answer and to run the closing handshake, so that
//! logic stays in one place. The relay's pure-Python path (websockets alone) is the
//! fallback and the reference: tests/unit/test_frame_reader.py runs both on the same
//! inputs.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString};

mod members;
mod outbox;

const OP_CONT: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

const PROTOCOL_ERROR: u16 = 1002;
const INVALID_DATA: u16 = 1007;
const MESSAGE_TOO_BIG: u16 = 1009;

/// Capacity a reader's buffers keep between reads. One large message must not leave a
/// buffer of its size behind: an idle connection would hold up to 2 x ws_max_size (the
/// unmasked copy and the read buffer) for as long as it lives, 500 KB at the relay's
/// defaults where an idle connection is ~6 KB. Above this, a buffer is freed once used.
const KEEP: usize = 4096;

/// What stopped the reader: a close code and its reason (websockets' wording).
type Failure = (u16, String);

/// One connection's incoming frames.
///
/// Bounds: `pending` holds at most one incomplete frame, and a frame's length is
/// checked against the limit as soon as its header is complete (before its payload is
/// waited for), so it holds at most `max_size` + 14 header bytes; `fragments` holds one
/// fragmented message, at most `max_size` bytes. Over the limit: close 1009, as
/// websockets does, and the reader holds nothing more. Between reads it keeps at most
/// KEEP bytes of spare capacity.
#[pyclass(module = "gamecluster_core")]
pub struct FrameReader {
    max_size: Option<usize>,
    /// The bytes of a frame not yet complete.
    pending: Vec<u8>,
    /// The opcode and payload so far of a fragmented message being received.
    fragments: Option<(u8, Vec<u8>)>,
    /// Unmasked payload of the current single-frame message (reused: no allocation per
    /// message once it has grown to the usual size).
    scratch: Vec<u8>,
    /// After a close frame or a failure the rest of the stream is discarded (RFC 6455
    /// 1.4 and 7.1.7), as websockets' `discard()` does.
    done: bool,
    error: Option<Failure>,
    /// A failure that ends the connection once the current read is parsed.
    deferred: Option<Failure>,
}

enum Step {
    /// Not enough bytes for the next frame.
    More,
    /// A frame was read: this many bytes were used.
    Used(usize),
}

fn unmask_into(out: &mut Vec<u8>, payload: &[u8], mask: [u8; 4]) {
    let start = out.len();
    out.extend_from_slice(payload);
    let data = &mut out[start..];
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes(chunk.try_into().expect("8 bytes")) ^ wide;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

fn too_big(size: u64, max_size: usize, current: Option<usize>) -> Failure {
    // websockets' PayloadTooBig text: the limit is the message's, not what was left of it.
    let reason = match current {
        Some(current) => format!(
            "frame with {size} bytes after reading {current} bytes exceeds limit of {} bytes",
            max_size
        ),
        None => format!("frame with {size} bytes exceeds limit of {max_size} bytes"),
    };
    (MESSAGE_TOO_BIG, reason)
}

impl FrameReader {
    /// Read one frame from the start of `data`, appending what it completes to `events`.
    fn step<'py>(
        &mut self,
        py: Python<'py>,
        data: &[u8],
        events: &Bound<'py, PyList>,
    ) -> Result<Step, Failure> {
        if data.len() < 2 {
            return Ok(Step::More);
        }
        let (head1, head2) = (data[0], data[1]);
        let opcode = head1 & 0x0F;
        if !matches!(
            opcode,
            OP_CONT | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
        ) {
            return Err((PROTOCOL_ERROR, "invalid opcode".into()));
        }
        if head2 & 0x80 == 0 {
            // A client's frames are masked (RFC 6455 5.1).
            return Err((PROTOCOL_ERROR, "incorrect masking".into()));
        }
        let (length, mut at) = match head2 & 0x7F {
            126 => {
                if data.len() < 4 {
                    return Ok(Step::More);
                }
                (u64::from(u16::from_be_bytes([data[2], data[3]])), 4)
            }
            127 => {
                if data.len() < 10 {
                    return Ok(Step::More);
                }
                (
                    u64::from_be_bytes(data[2..10].try_into().expect("8 bytes")),
                    10,
                )
            }
            short => (u64::from(short), 2),
        };
        let current = self.fragments.as_ref().map(|(_, buffer)| buffer.len());
        if let Some(max_size) = self.max_size {
            let left = max_size - current.unwrap_or(0);
            if length > left as u64 {
                return Err(too_big(length, max_size, current));
            }
        }
        // Within the limit, so it fits a usize (the limit is one). Without a limit, a
        // length past the address space is refused (no buffer could hold it) rather than
        // overflowing `at + 4 + length` (a slice-index panic in a release build).
        let Some(end) = usize::try_from(length)
            .ok()
            .and_then(|n| n.checked_add(at + 4))
        else {
            return Err(too_big(length, usize::MAX - at - 4, None));
        };
        let length = end - at - 4;
        if data.len() < end {
            return Ok(Step::More);
        }
        let mask: [u8; 4] = data[at..at + 4].try_into().expect("4 bytes");
        at += 4;
        let payload = &data[at..at + length];
        let used = at + length;
        let fin = head1 & 0x80 != 0;
        // websockets checks these once the payload is in (Frame.check), in this order.
        if head1 & 0x70 != 0 {
            return Err((PROTOCOL_ERROR, "reserved bits must be 0".into()));
        }
        if opcode >= OP_CLOSE {
            if length > 125 {
                return Err((PROTOCOL_ERROR, "control frame too long".into()));
            }
            if !fin {
                return Err((PROTOCOL_ERROR, "fragmented control frame".into()));
            }
        }
        match opcode {
            OP_TEXT | OP_BINARY => {
                if self.fragments.is_some() {
                    return Err((PROTOCOL_ERROR, "expected a continuation frame".into()));
                }
                if fin {
                    let mut scratch = std::mem::take(&mut self.scratch);
                    scratch.clear();
                    unmask_into(&mut scratch, payload, mask);
                    let pushed = self.push_message(py, events, opcode, &scratch);
                    if scratch.capacity() <= KEEP {
                        self.scratch = scratch; // reused: no allocation per small message
                    }
                    pushed?;
                } else {
                    let mut buffer = Vec::with_capacity(length);
                    unmask_into(&mut buffer, payload, mask);
                    self.fragments = Some((opcode, buffer));
                }
            }
            OP_CONT => {
                let Some((_, buffer)) = self.fragments.as_mut() else {
                    return Err((PROTOCOL_ERROR, "unexpected continuation frame".into()));
                };
                unmask_into(buffer, payload, mask);
                if fin {
                    let (first, buffer) = self.fragments.take().expect("a fragmented message");
                    self.push_message(py, events, first, &buffer)?;
                }
            }
            _ => {
                if opcode == OP_CLOSE {
                    if self.fragments.is_some() {
                        return Err(close_within_fragments(payload, mask));
                    }
                    self.done = true;
                }
                // As received (masked): websockets' protocol object parses it and answers.
                events
                    .append(PyBytes::new(py, &data[..used]))
                    .map_err(|_| (1011, String::new()))?;
            }
        }
        Ok(Step::Used(used))
    }

    fn fail(&mut self, failure: Failure) {
        self.error = Some(failure);
        self.done = true;
        self.pending = Vec::new();
        self.fragments = None;
    }

    /// Read every complete frame at the start of `data`; the number of bytes used.
    fn read_all<'py>(
        &mut self,
        py: Python<'py>,
        data: &[u8],
        events: &Bound<'py, PyList>,
    ) -> usize {
        let mut used = 0;
        while !self.done {
            match self.step(py, &data[used..], events) {
                Ok(Step::Used(n)) => used += n,
                Ok(Step::More) => break,
                Err(failure) => {
                    self.fail(failure);
                    break;
                }
            }
        }
        if let Some(failure) = self.deferred.take() {
            if self.error.is_none() {
                self.fail(failure);
            }
        }
        used
    }
}

/// A close frame while a fragmented message is open fails the connection; how, as
/// websockets says it (it parses the close frame first, then finds the message cut).
/// One difference: invalid UTF-8 in its reason is 1007 in both, with another reason text.
fn close_within_fragments(payload: &[u8], mask: [u8; 4]) -> Failure {
    let mut close = Vec::with_capacity(payload.len());
    unmask_into(&mut close, payload, mask);
    match close.len() {
        0 => {}
        1 => return (PROTOCOL_ERROR, "close frame too short".into()),
        _ => {
            if std::str::from_utf8(&close[2..]).is_err() {
                return (INVALID_DATA, "invalid UTF-8 in a close reason".into());
            }
            let code = u16::from_be_bytes([close[0], close[1]]);
            let known = matches!(code, 1000..=1003 | 1007..=1014) || (3000..5000).contains(&code);
            if !known {
                return (PROTOCOL_ERROR, "invalid status code".into());
            }
        }
    }
    (PROTOCOL_ERROR, "incomplete fragmented message".into())
}

impl FrameReader {
    /// A complete message: its text (checked UTF-8) or, for a binary one, None.
    ///
    /// Invalid UTF-8 fails the connection (1007) once the rest of this read is parsed,
    /// as with websockets, which parses a whole read before the relay decodes its texts:
    /// the control frames after it are answered first (a close frame already echoed
    /// wins), a protocol error after it wins, and no later message is handed over.
    fn push_message<'py>(
        &mut self,
        py: Python<'py>,
        events: &Bound<'py, PyList>,
        opcode: u8,
        payload: &[u8],
    ) -> Result<(), Failure> {
        if self.deferred.is_some() {
            return Ok(());
        }
        let appended = if opcode == OP_TEXT {
            let Ok(text) = std::str::from_utf8(payload) else {
                self.deferred = Some((INVALID_DATA, "invalid UTF-8 in a text message".into()));
                return Ok(());
            };
            events.append(PyString::new(py, text))
        } else {
            events.append(py.None())
        };
        appended.map_err(|_| (1011, String::new()))
    }
}

#[pymethods]
impl FrameReader {
    #[new]
    #[pyo3(signature = (max_size))]
    fn new(max_size: Option<usize>) -> Self {
        FrameReader {
            max_size,
            pending: Vec::new(),
            fragments: None,
            scratch: Vec::new(),
            done: false,
            error: None,
            deferred: None,
        }
    }

    /// Read `data`; returns what it completed, in order: a text message as `str`, a
    /// binary one as None, a control frame as the `bytes` it came in. After a failure
    /// (see `error`) or a close frame, the rest is discarded.
    fn feed<'py>(&mut self, py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyList>> {
        let events = PyList::empty(py);
        if self.done {
            return Ok(events);
        }
        if self.pending.is_empty() {
            // The usual case: whole frames in one read, parsed where they are.
            let used = self.read_all(py, data, &events);
            if !self.done && used < data.len() {
                self.pending.extend_from_slice(&data[used..]);
            }
        } else {
            let mut pending = std::mem::take(&mut self.pending);
            pending.extend_from_slice(data);
            let used = self.read_all(py, &pending, &events);
            if !self.done {
                pending.drain(..used);
                if pending.capacity() > KEEP && pending.len() <= pending.capacity() / 2 {
                    // What a large frame left: keep the rest of the read, not its size.
                    if pending.is_empty() {
                        pending = Vec::new();
                    } else {
                        pending.shrink_to(KEEP);
                    }
                }
                self.pending = pending;
            }
        }
        Ok(events)
    }

    /// Why the reader stopped: (close code, reason), or None.
    #[getter]
    fn error(&self) -> Option<Failure> {
        self.error.clone()
    }

    /// Bytes held: an incomplete frame and a fragmented message so far (for the bound's
    /// tests).
    #[getter]
    fn buffered(&self) -> usize {
        self.pending.len()
            + self
                .fragments
                .as_ref()
                .map_or(0, |(_, buffer)| buffer.len())
    }

    /// Bytes allocated for the buffers (their capacity): what the reader keeps between
    /// reads, for the tests of KEEP.
    #[getter]
    fn allocated(&self) -> usize {
        self.pending.capacity()
            + self.scratch.capacity()
            + self
                .fragments
                .as_ref()
                .map_or(0, |(_, buffer)| buffer.capacity())
    }
}

#[pymodule]
fn gamecluster_core(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<FrameReader>()?;
    module.add_class::<outbox::Outbox>()?;
    module.add_class::<outbox::FlushScheduler>()?;
    module.add_class::<members::Members>()?;
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
