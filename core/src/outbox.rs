//! The fan-out's per-recipient half: send queues and their one flush per loop turn.
//!
//! `Outbox` and `FlushScheduler` are relay.outbox's classes of the same names, method for
//! method (the relay's Python ones are the fallback and the reference:
//! tests/unit/test_outbox.py runs both), without a Python frame per recipient: a member's
//! `push` is one call into here, and the flush walks the dirty outboxes here, calling
//! only the socket's `send`. The async `replay` stays in Python (relay.outbox.CoreOutbox).
//!
//! Bound and overflow policy, as in relay.outbox: while the socket is paused (its client
//! is not reading) an outbox holds at most `limit` messages; one more calls `on_overflow`
//! (the session drops the slow consumer: `reconnect`, close 4008) and is not queued.

use pyo3::exceptions::PyException;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use pyo3::{PyTraverseError, PyVisit};

/// Largest batched frame (relay.outbox.BATCH_BYTES).
const BATCH_BYTES: usize = 64 * 1024;

/// The close code of a connection whose write raised (relay.protocol.CloseCode.INTERNAL_ERROR).
const INTERNAL_ERROR: i64 = 1011;

/// Capacity an emptied queue keeps for the next loop turn (an outbox's pending
/// messages, the scheduler's dirty outboxes), so that a push or a mark does not allocate
/// again every turn (a profile of the fan-out found ~2% of the relay's user time in Vec
/// growth). Bounded, so that a burst's queue is not kept: at most this many pointers.
const KEEP_PENDING: usize = 8;
const KEEP_DIRTY: usize = 4096;

/// Hand an emptied queue back to `slot` for reuse, unless something was queued there
/// meanwhile (a push from inside a send) or it grew past `keep`.
fn reuse<T>(slot: &mut Vec<T>, mut emptied: Vec<T>, keep: usize) {
    emptied.clear();
    if slot.is_empty() && slot.capacity() < emptied.capacity() && emptied.capacity() <= keep {
        *slot = emptied;
    }
}

#[pyclass(module = "gamecluster_core", subclass)]
pub struct FlushScheduler {
    dirty: Vec<Py<Outbox>>,
    scheduled: bool,
    /// The running loop's `call_soon`, looked up once (asyncio.get_running_loop() is a
    /// getpid() system call on CPython 3.11).
    call_soon: Option<Py<PyAny>>,
}

impl FlushScheduler {
    fn mark_outbox(slf: &Bound<'_, Self>, outbox: Py<Outbox>) -> PyResult<()> {
        let py = slf.py();
        let call_soon = {
            let mut this = slf.borrow_mut();
            this.dirty.push(outbox);
            if this.scheduled {
                return Ok(());
            }
            this.scheduled = true;
            match &this.call_soon {
                Some(call_soon) => call_soon.clone_ref(py),
                None => {
                    let event_loop = py
                        .import(intern!(py, "asyncio"))?
                        .call_method0(intern!(py, "get_running_loop"))?;
                    let call_soon = event_loop.getattr(intern!(py, "call_soon"))?.unbind();
                    this.call_soon = Some(call_soon.clone_ref(py));
                    call_soon
                }
            }
        };
        call_soon.call1(py, (slf.getattr(intern!(py, "_flush"))?,))?;
        Ok(())
    }
}

#[pymethods]
impl FlushScheduler {
    #[new]
    fn new() -> Self {
        FlushScheduler {
            dirty: Vec::new(),
            scheduled: false,
            call_soon: None,
        }
    }

    fn mark(slf: &Bound<'_, Self>, outbox: Py<Outbox>) -> PyResult<()> {
        Self::mark_outbox(slf, outbox)
    }

    // The garbage collector sees what this holds (outboxes refer back to it).
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        for outbox in &self.dirty {
            visit.call(outbox)?;
        }
        if let Some(call_soon) = &self.call_soon {
            visit.call(call_soon)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.dirty.clear();
        self.call_soon = None;
    }

    fn _flush(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let mut dirty = {
            let mut this = slf.borrow_mut();
            this.scheduled = false;
            std::mem::take(&mut this.dirty)
        };
        // Event bytes -> frame, shared across sockets.
        let frames = PyDict::new(py);
        // A write that raises costs its connection alone (relay.outbox's docstring): the
        // others of this turn are off the dirty list already, so the loop goes on, and
        // the first error is raised once the turn is written.
        let mut failure: Option<PyErr> = None;
        for outbox in dirty.drain(..) {
            let outbox = outbox.bind(py);
            if let Err(err) = Outbox::flush_with(outbox, Some(&frames)) {
                if !err.is_instance_of::<PyException>(py) {
                    return Err(err); // KeyboardInterrupt, SystemExit: at once, as in Python
                }
                Outbox::fail_quietly(outbox);
                failure.get_or_insert(err);
            }
        }
        reuse(&mut slf.borrow_mut().dirty, dirty, KEEP_DIRTY);
        failure.map_or(Ok(()), Err)
    }
}

/// A relay.transport.RawSocket's protocol, written to without the socket's Python
/// methods: `write_paused`, `_state` and `transport` are slots of
/// RelayWebSocketProtocol, read here as RawSocket.paused, .closed and .send read them.
/// Only for an uncompressed connection (a compressed one has no shared frames).
struct Direct {
    protocol: Py<PyAny>,
    /// relay.transport._State.OPEN, as read from the protocol when the outbox was made
    /// (an outbox is made for an open connection).
    open: Py<PyAny>,
}

/// One unmasked, final, uncompressed text frame (relay.transport.text_frame).
fn text_frame<'py>(py: Python<'py>, payload: &[u8]) -> Bound<'py, PyBytes> {
    let size = payload.len();
    let mut frame = Vec::with_capacity(size + 10);
    frame.push(0x81);
    if size < 126 {
        frame.push(size as u8);
    } else if size < 65536 {
        frame.push(126);
        frame.extend_from_slice(&(size as u16).to_be_bytes());
    } else {
        frame.push(127);
        frame.extend_from_slice(&(size as u64).to_be_bytes());
    }
    frame.extend_from_slice(payload);
    PyBytes::new(py, &frame)
}

#[pyclass(module = "gamecluster_core", subclass)]
pub struct Outbox {
    direct: Option<Direct>,
    socket: Py<PyAny>,
    scheduler: Py<FlushScheduler>,
    limit: usize,
    on_overflow: Py<PyAny>,
    pending: Vec<Py<PyBytes>>,
    #[pyo3(get)]
    closed: bool,
    #[pyo3(get)]
    close_code: Option<i64>,
    #[pyo3(get, set, name = "_waiter")]
    waiter: Option<Py<PyAny>>,
}

impl Outbox {
    // No borrow of the outbox is held across a call into Python: a socket's `close`
    // calls back into `_resumed`.

    /// RawSocket.paused: read with no borrow of the outbox held (the socket's `paused`
    /// is Python code).
    fn paused(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let py = slf.py();
        let (target, name) = {
            let this = slf.borrow();
            match &this.direct {
                Some(direct) => (direct.protocol.clone_ref(py), intern!(py, "write_paused")),
                None => (this.socket.clone_ref(py), intern!(py, "paused")),
            }
        };
        target.bind(py).getattr(name)?.is_truthy()
    }

    /// RawSocket.send(payload, frames) for a lone message, written here when direct.
    fn send_shared(
        slf: &Bound<'_, Self>,
        socket: &Bound<'_, PyAny>,
        payload: Py<PyBytes>,
        frames: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let py = slf.py();
        // Taken out of the borrow before any call into Python: `send` may come back into
        // this outbox (a `push` from there panicked with "Already borrowed", and the
        // exception ended the whole flush, leaving every later outbox of that loop turn
        // unflushed).
        let direct = {
            let this = slf.borrow();
            this.direct
                .as_ref()
                .map(|d| (d.protocol.clone_ref(py), d.open.clone_ref(py)))
        };
        let (protocol, open) = match (direct, frames) {
            (Some((protocol, open)), Some(_)) => (protocol.into_bound(py), open.into_bound(py)),
            _ => {
                socket.call_method1(intern!(py, "send"), (payload, frames))?;
                return Ok(());
            }
        };
        let frames = frames.expect("frames");
        if !protocol.getattr(intern!(py, "_state"))?.is(&open) {
            return Ok(()); // closing or closed: RawSocket.send writes nothing either
        }
        let transport = protocol.getattr(intern!(py, "transport"))?;
        if transport
            .call_method0(intern!(py, "is_closing"))?
            .is_truthy()?
        {
            return Ok(());
        }
        let payload = payload.bind(py);
        let frame = match frames.get_item(payload)? {
            Some(frame) => frame,
            None => {
                let frame = text_frame(py, payload.as_bytes()).into_any();
                frames.set_item(payload, &frame)?;
                frame
            }
        };
        transport.call_method1(intern!(py, "write"), (frame,))?;
        Ok(())
    }

    fn flush_with(slf: &Bound<'_, Self>, frames: Option<&Bound<'_, PyDict>>) -> PyResult<()> {
        let py = slf.py();
        let socket = {
            let this = slf.borrow();
            if this.closed || this.pending.is_empty() {
                return Ok(());
            }
            this.socket.bind(py).clone()
        };
        if Self::paused(slf)? {
            return Ok(());
        }
        Self::write_all(slf, &socket, frames)
    }

    fn write_all(
        slf: &Bound<'_, Self>,
        socket: &Bound<'_, PyAny>,
        frames: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let send = intern!(py, "send");
        let mut pending = std::mem::take(&mut slf.borrow_mut().pending);
        if pending.len() == 1 {
            let payload = pending.pop().expect("one message");
            Self::send_shared(slf, socket, payload, frames)?;
            reuse(&mut slf.borrow_mut().pending, pending, KEEP_PENDING);
            return Self::wake(slf);
        }
        let mut batch: Vec<u8> = Vec::new();
        let mut size = 0usize;
        for payload in &pending {
            let bytes = payload.bind(py).as_bytes();
            if !batch.is_empty() && size + bytes.len() > BATCH_BYTES {
                socket.call_method1(send, (PyBytes::new(py, &batch),))?;
                batch.clear();
                size = 0;
            }
            if !batch.is_empty() {
                batch.push(b'\n');
            }
            batch.extend_from_slice(bytes);
            size += bytes.len() + 1;
        }
        if !batch.is_empty() {
            socket.call_method1(send, (PyBytes::new(py, &batch),))?;
        }
        reuse(&mut slf.borrow_mut().pending, pending, KEEP_PENDING);
        Self::wake(slf)
    }

    fn wake(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let waiter = match &slf.borrow().waiter {
            Some(waiter) => waiter.clone_ref(py),
            None => return Ok(()),
        };
        let waiter = waiter.bind(py);
        if !waiter.call_method0(intern!(py, "done"))?.is_truthy()? {
            waiter.call_method1(intern!(py, "set_result"), (py.None(),))?;
        }
        Ok(())
    }

    /// Writing to the socket raised (relay.outbox.Outbox.fail): closed with 1011, what
    /// was pending dropped. Raises nothing: the socket's own close may fail too, and the
    /// write's error is the one to report.
    fn fail_quietly(slf: &Bound<'_, Self>) {
        let py = slf.py();
        let socket = {
            let Ok(mut this) = slf.try_borrow_mut() else {
                return; // in use further up the stack: that caller sees the error
            };
            if this.closed {
                return;
            }
            this.pending.clear();
            this.closed = true;
            this.close_code = Some(INTERNAL_ERROR);
            this.socket.bind(py).clone()
        };
        let _ = socket.call_method1(intern!(py, "close"), (INTERNAL_ERROR,));
        let _ = Self::wake(slf);
    }

    fn mark(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let scheduler = slf.borrow().scheduler.clone_ref(py);
        FlushScheduler::mark_outbox(scheduler.bind(py), slf.clone().unbind())
    }
}

#[pymethods]
impl Outbox {
    #[new]
    #[pyo3(signature = (socket, scheduler, *, limit, on_overflow))]
    fn new(
        socket: Bound<'_, PyAny>,
        scheduler: Py<FlushScheduler>,
        limit: usize,
        on_overflow: Py<PyAny>,
    ) -> PyResult<Self> {
        let py = socket.py();
        // A RawSocket of an open, uncompressed connection is written to directly.
        let direct = match socket.getattr(intern!(py, "_protocol")) {
            Ok(protocol)
                if !protocol.getattr(intern!(py, "closing"))?.is_truthy()?
                    && !protocol.getattr(intern!(py, "compressed"))?.is_truthy()? =>
            {
                let open = protocol.getattr(intern!(py, "_state"))?.unbind();
                Some(Direct {
                    protocol: protocol.unbind(),
                    open,
                })
            }
            _ => None,
        };
        Ok(Outbox {
            direct,
            socket: socket.unbind(),
            scheduler,
            limit,
            on_overflow,
            pending: Vec::new(),
            closed: false,
            close_code: None,
            waiter: None,
        })
    }

    /// Also called by members::Members::push_all, for each member's outbox.
    pub(crate) fn push(slf: &Bound<'_, Self>, payload: Bound<'_, PyBytes>) -> PyResult<()> {
        let py = slf.py();
        let (queued, limit) = {
            let this = slf.borrow();
            if this.closed {
                return Ok(());
            }
            (this.pending.len(), this.limit)
        };
        // Only a paused socket (its client is not reading) makes messages wait; a burst
        // pushed within one loop turn must not count as a slow consumer.
        if queued >= limit && Self::paused(slf)? {
            let on_overflow = slf.borrow().on_overflow.clone_ref(py);
            on_overflow.call0(py)?;
            return Ok(());
        }
        slf.borrow_mut().pending.push(payload.unbind());
        // The first message marks the outbox for this loop turn's flush, paused or not:
        // the flush skips a paused socket and `_resumed` marks it again once it drains.
        // So the common push (one message per recipient per event) reads no socket state
        // (reading the protocol's `write_paused` was ~2% of the relay's user time).
        if queued == 0 {
            Self::mark(slf)?;
        }
        Ok(())
    }

    #[pyo3(signature = (frames = None))]
    fn flush(slf: &Bound<'_, Self>, frames: Option<&Bound<'_, PyDict>>) -> PyResult<()> {
        Self::flush_with(slf, frames)
    }

    fn fail(slf: &Bound<'_, Self>) {
        Self::fail_quietly(slf)
    }

    #[pyo3(signature = (r#final, code, *, drop_pending = false))]
    fn close(
        slf: &Bound<'_, Self>,
        r#final: Option<Bound<'_, PyBytes>>,
        code: i64,
        drop_pending: bool,
    ) -> PyResult<()> {
        let py = slf.py();
        let socket = {
            let mut this = slf.borrow_mut();
            if this.closed {
                return Ok(());
            }
            if drop_pending {
                this.pending.clear();
            }
            this.socket.bind(py).clone()
        };
        let written = Self::write_all(slf, &socket, None).and_then(|()| match r#final {
            Some(last) => socket.call_method1(intern!(py, "send"), (last,)).map(drop),
            None => Ok(()),
        });
        if let Err(err) = written {
            // The connection ends all the same (1011, relay.outbox.Outbox.close), then the
            // error is raised.
            Self::fail_quietly(slf);
            return Err(err);
        }
        {
            let mut this = slf.borrow_mut();
            this.closed = true;
            this.close_code = Some(code);
        }
        socket.call_method1(intern!(py, "close"), (code,))?;
        Self::wake(slf)
    }

    /// The socket drained below its low-water mark, or the connection is gone.
    fn _resumed(slf: &Bound<'_, Self>) -> PyResult<()> {
        let again = {
            let this = slf.borrow();
            !this.pending.is_empty() && !this.closed
        };
        if again {
            Self::mark(slf)?;
        }
        Self::wake(slf)
    }

    /// The replay's next chunk (relay.outbox.CoreOutbox.replay): queued, then flushed.
    fn _queue_chunk(slf: &Bound<'_, Self>, payloads: Vec<Bound<'_, PyBytes>>) -> PyResult<()> {
        slf.borrow_mut()
            .pending
            .extend(payloads.into_iter().map(Bound::unbind));
        Self::mark(slf)
    }

    // An outbox and its socket (`on_resume`), its session (`on_overflow`) refer to each
    // other: the garbage collector must see these references, or no connection's objects
    // would ever be freed.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(direct) = &self.direct {
            visit.call(&direct.protocol)?;
            visit.call(&direct.open)?;
        }
        visit.call(&self.socket)?;
        visit.call(&self.scheduler)?;
        visit.call(&self.on_overflow)?;
        if let Some(waiter) = &self.waiter {
            visit.call(waiter)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        // The other objects of a cycle are cleared too; what is left here is freed with
        // the outbox itself.
        self.pending.clear();
        self.waiter = None;
    }

    #[getter]
    fn _limit(&self) -> usize {
        self.limit
    }

    #[getter]
    fn _has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    #[getter]
    fn _socket(&self, py: Python<'_>) -> Py<PyAny> {
        self.socket.clone_ref(py)
    }
}
