//! A room's local members, as the hub's fan-out sees them: one call per event.
//!
//! `Members` is relay.hub.Members (a set of members with `push_all`), which stays the
//! fallback and the reference (tests/unit/test_hub.py runs both). Without it the hub's
//! loop over a room's members made a Python-level `member.push(payload)` per recipient,
//! the largest self time left in a profile of the relay (issue #18). Here the loop is
//! native, and a member whose `push` is a core Outbox's own method (a session's, see
//! relay.session) is pushed to through Outbox::push directly: the same bound, overflow
//! callback and flush mark, without a Python call. Any other member's `push` is called.
//!
//! Membership is a Python dict (member -> what to push to), so it is exactly a Python
//! set's: the members' own hash and equality, not their addresses.

use pyo3::exceptions::PyException;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyCFunction, PyDict};
use pyo3::{PyTraverseError, PyVisit};

use crate::outbox::Outbox;

#[pyclass(module = "gamecluster_core")]
pub struct Members {
    /// member -> its core Outbox, or its `push` callable; looked up once, at `add`.
    targets: Py<PyDict>,
}

#[pymethods]
impl Members {
    #[new]
    fn new(py: Python<'_>) -> Self {
        Members {
            targets: PyDict::new(py).unbind(),
        }
    }

    fn add(&self, member: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = member.py();
        let targets = self.targets.bind(py);
        // As set.add: a member equal to one already here changes nothing (the first one
        // stays, and so does what it is pushed to).
        if targets.contains(member)? {
            return Ok(());
        }
        let push = member.getattr(intern!(py, "push"))?;
        // Only the Outbox's own (compiled) `push` is bypassed: a Python method bound to
        // an outbox (a subclass's override), or another of its compiled methods, is
        // called like any other.
        let target = match push.cast::<PyCFunction>() {
            Ok(method)
                if method
                    .getattr(intern!(py, "__name__"))?
                    .eq(intern!(py, "push"))? =>
            {
                match method.getattr(intern!(py, "__self__")) {
                    Ok(owner) if owner.is_instance_of::<Outbox>() => owner,
                    _ => push,
                }
            }
            _ => push,
        };
        targets.set_item(member, target)
    }

    fn discard(&self, member: &Bound<'_, PyAny>) -> PyResult<()> {
        let targets = self.targets.bind(member.py());
        if targets.contains(member)? {
            targets.del_item(member)?;
        }
        Ok(())
    }

    fn __contains__(&self, member: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.targets.bind(member.py()).contains(member)
    }

    fn __len__(&self, py: Python<'_>) -> usize {
        self.targets.bind(py).len()
    }

    /// Push `payload` to every member; the number of members pushed to.
    ///
    /// The members are those at the call: a member's push may change the set (an
    /// overflow drops a slow consumer, which may leave its rooms), so the loop runs over
    /// a snapshot (one list of the targets), not the dict itself, and no borrow of this
    /// object is held while Python code runs. A member removed meanwhile is still pushed
    /// to (its outbox is closed by then: a no-op); one added meanwhile is not.
    ///
    /// A member whose push raises costs the others nothing: every member is pushed to,
    /// then the first error is raised.
    fn push_all(&self, payload: &Bound<'_, PyBytes>) -> PyResult<usize> {
        let py = payload.py();
        let targets = self.targets.bind(py).values();
        let mut failure: Option<PyErr> = None;
        for target in targets.iter() {
            let pushed = match target.cast::<Outbox>() {
                Ok(outbox) => Outbox::push(outbox, payload.clone()),
                Err(_) => target.call1((payload,)).map(drop),
            };
            if let Err(err) = pushed {
                if !err.is_instance_of::<PyException>(py) {
                    return Err(err); // KeyboardInterrupt, SystemExit: at once, as in Python
                }
                failure.get_or_insert(err);
            }
        }
        failure.map_or(Ok(targets.len()), Err)
    }

    // A member (a session) refers through its services to the hub that holds this set:
    // the garbage collector must see the references, or a cycle through it is never freed.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.targets)
    }

    fn __clear__(&mut self, py: Python<'_>) {
        // Emptying the dict drops its references to the members, which breaks the cycle.
        self.targets.bind(py).clear();
    }
}
