//! `nodekit-init`: the small single-threaded program the native runtime executes to create
//! sandboxes, start containers (and their monitors) and run execs. See
//! `node_cri::native::runtime::init`.

fn main() {
    node_cri::native::runtime::init::main()
}
