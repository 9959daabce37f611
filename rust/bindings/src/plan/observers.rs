//! Observer dispatch: the hooks the dispatcher fires, resolved once per plan.

use crate::gc_traverse;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

/// The observer hooks the dispatcher fires.
#[derive(Debug, Clone, Copy)]
pub enum Hook {
    StateEnter,
    TaskStart,
    TaskSuccess,
    TaskFailure,
    Retry,
    CircuitOpen,
    Checkpoint,
    Resume,
    WorkflowTimeout,
    Cancelled,
    ClearFailed,
    RunStart,
    RunFinish,
    UnknownResumeState,
}

impl Hook {
    pub const ALL: [Hook; 14] = [
        Hook::StateEnter,
        Hook::TaskStart,
        Hook::TaskSuccess,
        Hook::TaskFailure,
        Hook::Retry,
        Hook::CircuitOpen,
        Hook::Checkpoint,
        Hook::Resume,
        Hook::WorkflowTimeout,
        Hook::Cancelled,
        Hook::ClearFailed,
        Hook::RunStart,
        Hook::RunFinish,
        Hook::UnknownResumeState,
    ];

    /// The observer method implementing the hook.
    pub fn name(self) -> &'static str {
        match self {
            Hook::StateEnter => "on_state_enter",
            Hook::TaskStart => "on_task_start",
            Hook::TaskSuccess => "on_task_success",
            Hook::TaskFailure => "on_task_failure",
            Hook::Retry => "on_retry",
            Hook::CircuitOpen => "on_circuit_open",
            Hook::Checkpoint => "on_checkpoint",
            Hook::Resume => "on_resume",
            Hook::WorkflowTimeout => "on_workflow_timeout",
            Hook::Cancelled => "on_cancelled",
            Hook::ClearFailed => "on_checkpoint_clear_failed",
            Hook::RunStart => "on_run_start",
            Hook::RunFinish => "on_run_finish",
            Hook::UnknownResumeState => "on_unknown_resume_state",
        }
    }
}

/// The observer methods implementing each hook, so that a hook no observer implements costs
/// one branch and an implemented one a direct call.
pub struct Observers {
    targets: Vec<Vec<Py<PyAny>>>,
    hub: Py<PyAny>,
}

gc_traverse!(Observers { targets, hub });

impl Observers {
    /// Resolves every hook once, through the hub's `targets(name)`.
    pub fn resolve(hub: &Bound<'_, PyAny>) -> PyResult<Self> {
        let py = hub.py();
        let mut targets = Vec::with_capacity(Hook::ALL.len());
        for hook in Hook::ALL {
            let found = hub.call_method1(pyo3::intern!(py, "targets"), (hook.name(),))?;
            targets.push(found.extract::<Vec<Py<PyAny>>>()?);
        }
        Ok(Observers { targets, hub: hub.clone().unbind() })
    }

    /// True when some observer implements `hook`.
    #[inline]
    pub fn observes(&self, hook: Hook) -> bool {
        !self.targets[hook as usize].is_empty()
    }

    /// Calls every observer method implementing `hook`; one that raises is logged on the
    /// `cano` logger (through the hub) and ignored.
    pub fn notify<'py, A>(&self, py: Python<'py>, hook: Hook, args: A)
    where
        A: IntoPyObject<'py, Target = PyTuple>,
    {
        let targets = &self.targets[hook as usize];
        if targets.is_empty() {
            return;
        }
        let Ok(args) = args.into_pyobject(py) else { return };
        let args = pyo3::BoundObject::into_bound(args);
        for target in targets {
            if let Err(e) = target.bind(py).call(&args, None) {
                let reported = self
                    .hub
                    .bind(py)
                    .call_method1(pyo3::intern!(py, "report"), (hook.name(), e.value(py)));
                if let Err(e) = reported {
                    e.write_unraisable(py, None);
                }
            }
        }
    }
}
