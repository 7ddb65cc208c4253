//! Calls into a pool's balancer: `select`, checked against the table it was given, and
//! `on-response`.

use pingora::http::RequestHeader;
use std::time::Duration;
use switchyard_plugin_sdk::abi::{FLAG_HEALTHY, FLAGS};

use super::failure::FailureKind;
use super::instance::PoolBalancer;
use super::request::RequestView;
use super::{AbiVersion, PluginError};

impl PoolBalancer {
    /// The interface version of this balancer: which layout its table is filled in.
    pub fn abi(&self) -> AbiVersion {
        self.plugin.abi()
    }

    /// Asks the plugin to choose among the backends of `table` (one row of
    /// [`AbiVersion::stride`] values each, see `switchyard_plugin_sdk::abi`) for the
    /// request whose header is `header`. `Ok(None)`: the plugin left the choice to the
    /// host. An index out of range or of a backend not healthy is a failed call.
    pub fn select(
        &self,
        header: &mut RequestHeader,
        view: &mut RequestView,
        table: &mut Vec<u32>,
    ) -> Result<Option<usize>, PluginError> {
        let stride = self.abi().stride();
        let choice = self.with_instance("select", Some((header, view)), |b, store| {
            b.select(store, table, stride)
        })?;
        let Some(index) = choice else { return Ok(None) };
        let index = index as usize;
        let count = table.len() / stride;
        if index >= count {
            return Err(self.invalid_answer(
                "select",
                FailureKind::OutOfRange,
                format!("returned backend {index}, but the pool has {count} backends"),
            ));
        }
        if table[index * stride + FLAGS] & FLAG_HEALTHY == 0 {
            return Err(self.invalid_answer(
                "select",
                FailureKind::Unhealthy,
                format!("chose backend {index}, which is not healthy for this request"),
            ));
        }
        Ok(Some(index))
    }

    /// Tells the plugin how a request on `backend` ended.
    pub fn on_response(
        &self,
        backend: usize,
        status: u16,
        latency: Duration,
    ) -> Result<(), PluginError> {
        let backend = u32::try_from(backend).unwrap_or(u32::MAX);
        let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        // A quarantined plugin is not fed either: it is not asked, and not counted.
        if self.quarantined_for().is_some() {
            return Ok(());
        }
        self.with_instance("on-response", None, |b, store| {
            b.on_response(store, backend, status, latency_us)
        })
    }
}
