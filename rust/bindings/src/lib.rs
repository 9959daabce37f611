//! `cano._core`: the thin PyO3 layer of cano.
//!
//! - [`run`]: the `Run` coroutine, the dispatcher that drives task coroutines;
//! - [`workflow`]: `Plan` and `Handler`, the compiled snapshot a run executes;
//! - [`config`]: `RetryMode` and `TaskConfig`;
//! - [`cancel`]: `CancellationToken` and `CancellationHandle`;
//! - [`errors`], [`duration`]: conversions at the Python boundary.

use pyo3::prelude::*;

mod cancel;
mod config;
mod duration;
mod errors;
mod run;
mod workflow;

#[pymodule(gil_used = true)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<config::RetryMode>()?;
    m.add_class::<config::TaskConfig>()?;
    m.add_class::<cancel::CancellationToken>()?;
    m.add_class::<cancel::CancellationHandle>()?;
    m.add_class::<workflow::Handler>()?;
    m.add_class::<workflow::Plan>()?;
    m.add_class::<run::Run>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
