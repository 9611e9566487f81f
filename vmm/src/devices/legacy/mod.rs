//! Legacy port-I/O devices: 8250 serial and i8042.
