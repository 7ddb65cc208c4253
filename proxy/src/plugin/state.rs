//! What a plugin instance's store holds: its WASI context (empty: no files, no
//! environment, no sockets), its limits, and the request of the call in progress,
//! which the `request` resource of each interface version reads.

use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::output::PluginOutput;
use super::request::{RequestHandle, RequestSlot};
use super::virtual_world::VirtualWorld;

/// Per-instance host state.
pub struct PluginState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(crate) limits: StoreLimits,
    /// The request of the call in progress.
    pub(crate) request: RequestSlot,
}

impl std::fmt::Debug for PluginState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginState").finish_non_exhaustive()
    }
}

impl PluginState {
    /// Fresh state for one instance: no files, no environment, no
    /// arguments, no sockets; stdout and stderr go to the log.
    /// `output` is shared by all instances of one plugin use, so its rate limit holds
    /// across the fresh instances that replace trapped ones.
    /// In a simulation (`world`), its clocks read simulated time and its random numbers
    /// come from the run's seed.
    pub fn new(output: &PluginOutput, memory_bytes: u64, world: Option<&VirtualWorld>) -> Self {
        let mut builder = WasiCtx::builder();
        builder
            .stdout(output.stream("stdout"))
            .stderr(output.stream("stderr"))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if let Some(world) = world {
            world.furnish(&mut builder);
        }
        let wasi = builder.build();
        let memory = usize::try_from(memory_bytes).unwrap_or(usize::MAX);
        let limits = StoreLimitsBuilder::new()
            .memory_size(memory)
            .table_elements(100_000)
            .instances(32)
            .tables(32)
            .memories(8)
            .trap_on_grow_failure(false)
            .build();
        PluginState {
            wasi,
            table: ResourceTable::new(),
            limits,
            request: RequestSlot::default(),
        }
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The `request` resource of each interface version, over the same slot.
macro_rules! request_resource {
    ($module:ident, $types:path $(, $extra:item)*) => {
        mod $module {
        use super::{PluginState, RequestHandle, Resource};
        use $types as types;

        impl types::Host for PluginState {}

        impl types::HostRequest for PluginState {
            fn method(&mut self, _: Resource<RequestHandle>) -> String {
                self.request.method()
            }

            fn host(&mut self, _: Resource<RequestHandle>) -> String {
                self.request.view.host.clone()
            }

            fn path(&mut self, _: Resource<RequestHandle>) -> String {
                self.request.view.path.clone()
            }

            fn client_addr(&mut self, _: Resource<RequestHandle>) -> String {
                self.request.client_addr()
            }

            fn header(&mut self, _: Resource<RequestHandle>, name: String) -> Option<String> {
                self.request.header_value(&name)
            }

            $($extra)*

            fn drop(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<()> {
                // The handle owns nothing: the slot is reused for the next call.
                Ok(())
            }
        }
        }
    };
}

request_resource!(
    v0_1,
    crate::plugin::bindings::v0_1::balancer::switchyard::plugin::types
);
request_resource!(
    v0_2,
    crate::plugin::bindings::v0_2::balancer::switchyard::plugin::types,
    fn query(&mut self, _: Resource<RequestHandle>) -> Option<String> {
        self.request.query()
    }
);
