//! Bare Pingora with the system allocator. `bare-pingora LISTEN THREADS UPSTREAM...`

mod proxy;

fn main() {
    proxy::run()
}
