//! Legacy port-I/O devices: 8250 serial and i8042.

pub mod i8042;
pub mod serial;

pub use i8042::I8042;
pub use serial::{ConsoleLog, SerialDevice};
