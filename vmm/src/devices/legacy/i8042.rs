//! The i8042 controller at 0x60..0x64 (vm-superio's `I8042Device`): its only job here is the
//! CPU reset command (0xfe to port 0x64), which ends the VM with exit status 0.

use std::sync::mpsc::Sender;

use vm_superio::{I8042Device, Trigger};

use crate::devices::BusDevice;
use crate::vstate::vcpu::VmExit;

/// Number of ports the controller spans from 0x60 (the command port is 0x64).
pub const I8042_PORTS: u64 = 5;

/// Reports the reset straight to the main thread, before the vCPU resumes the guest.
pub struct ResetTrigger(Sender<VmExit>);

impl Trigger for ResetTrigger {
    type E = std::sync::mpsc::SendError<VmExit>;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.send(VmExit::Reset)
    }
}

/// The controller on the port-I/O bus.
pub struct I8042 {
    dev: I8042Device<ResetTrigger>,
}

impl I8042 {
    /// A controller that sends [`VmExit::Reset`] on `exits` when the guest resets the CPU.
    pub fn new(exits: Sender<VmExit>) -> Self {
        Self {
            dev: I8042Device::new(ResetTrigger(exits)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let ([byte], Ok(offset)) = (data, u8::try_from(offset)) {
            *byte = self.dev.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let ([byte], Ok(offset)) = (data, u8::try_from(offset)) else {
            return;
        };
        if self.dev.write(offset, *byte).is_err() {
            tracing::debug!("reset requested after the vm ended");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_ends_vm() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut dev = I8042::new(tx);
        dev.write(4, &[0xaa]);
        assert!(rx.try_recv().is_err());
        dev.write(4, &[0xfe]);
        assert_eq!(rx.try_recv().unwrap(), VmExit::Reset);
        dev.write(0, &[0xfe]);
        assert!(rx.try_recv().is_err());
    }
}
