//! The driver's blocking conveniences wait through this.

use std::time::Duration;

use xenblk::platform::{Wait, Wake};

use crate::Dom;

impl Wait for Dom {
    fn wait(&mut self, timeout_ms: Option<u64>) -> Wake {
        let w = Dom::wait(self, timeout_ms.map(Duration::from_millis));
        if w.watches {
            self.take_watch_events();
        }
        Wake {
            event: !w.ports.is_empty() || !w.closed.is_empty(),
            xenstore: w.watches,
            timeout: w.timed_out || w.destroyed,
        }
    }
}
