//! moat-runtime: the host library shared by the `moat` CLI and the containerd shim.
