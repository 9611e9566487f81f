//! virtio-vsock whose host side is a Unix socket (hybrid vsock).
