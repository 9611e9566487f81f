//! Execs (protocol v4): several processes at once in one container.
