//! The virtio-mmio transport (virtio 1.x, MMIO register layout version 2).
