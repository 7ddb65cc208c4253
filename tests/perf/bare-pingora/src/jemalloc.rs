//! Bare Pingora with jemalloc, Switchyard's allocator. `bare-pingora-jemalloc LISTEN THREADS UPSTREAM...`

mod proxy;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    proxy::run()
}
