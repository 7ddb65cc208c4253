//! Bare Pingora with the system allocator. `bare-pingora LISTEN THREADS UPSTREAM...` (or `answer` instead of upstreams)

mod proxy;

fn main() {
    proxy::run()
}
