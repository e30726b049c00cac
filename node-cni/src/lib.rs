//! Pod networking behind node-core's `CniPlugin`: the CNI spec runtime that executes plugin
//! binaries, and a native bridge plugin over netlink.
